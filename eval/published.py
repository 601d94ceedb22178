"""Published rows for the report, from the dataset's own metadata.

An importer records a domain's published results (``<name>.published.json`` beside its test file, checked against
that file's sha256 by :mod:`data_builders.published`) in the dataset's ``meta.json`` under ``source.published``; a
merged dataset has one record per domain under ``source.parts``. Nothing here is tied to one dataset: a dataset
without such a file gets no published rows. The embedded Amazon 2018 domains carry MiniOneRec's table
(``data/amazon18/<domain>/<domain>.published.json``): those models trained on the original ~36k/38k training rows,
ours on the leak-free reconstruction, so their label says "different training data".
"""

from __future__ import annotations


def source_parts(dataset_meta: dict) -> list[dict]:
    """The importer records of a dataset's meta (one per domain for a merged dataset)."""
    source = dataset_meta.get("source") or {}
    return list(source.get("parts") or [source])


def _records(dataset_meta: dict) -> list[tuple[str, dict]]:
    return [(part.get("name") or "dataset", part["published"]) for part in source_parts(dataset_meta)
            if isinstance(part.get("published"), dict)]


def published_domains(dataset_meta: dict) -> list[str]:
    """Domains of this dataset that carry published results."""
    return [domain for domain, _ in _records(dataset_meta)]


def published_sources(dataset_meta: dict) -> dict[str, dict[str, str]]:
    """``{domain: {"source", "label", "protocol"}}`` of each domain's published rows."""
    return {domain: {k: rec.get(k, "") for k in ("source", "label", "protocol")}
            for domain, rec in _records(dataset_meta)}


def dataset_notes(dataset_meta: dict) -> list[str]:
    """What the importer says about how the train split was made (e.g. rebuilt windows), one line per domain."""
    notes = []
    for part in source_parts(dataset_meta):
        if part.get("train_split"):
            notes.append(f"{part.get('name', 'dataset')}: train split {part['train_split']}"
                         + (f" (history up to {part['max_history_train']} items)" if part.get("max_history_train")
                            else ""))
    return notes


def published_table(dataset_meta: dict) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {domain: {"hr@3": ..., "ndcg@10": ...}}}`` over the domains whose metadata carries published
    results (see :func:`published_domains`)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for domain, rec in _records(dataset_meta):
        for model, values in (rec.get("models") or {}).items():
            table.setdefault(model, {})[domain] = dict(values)
    return table
