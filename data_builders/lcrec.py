"""Importer for LC-Rec style data directories (``<name>.inter.json``, ``.item.json``, ``.index.json``).

* ``<name>.inter.json`` (required): ``{user: [item ids, oldest first]}``.
* ``<name>.item.json`` (optional): ``{item: {title, description, brand, categories}}``. ``description`` may be a
  string, a list or a stringified list (joined into one string); ``categories`` may be a list, a stringified list,
  or LC-Rec's comma-joined string ``"Toys,Games"`` (split on commas *not* followed by a space, so that
  ``"Clothing, Shoes & Jewelry"`` stays one category).
* ``<name>.index.json`` (optional): ``{item: ["<a_1>", "<b_2>", ...]}``, a published semantic-ID index; copied into
  the dataset as ``sids.index.json`` (re-serialised with sorted keys).

Each file may be gzipped (``.json.gz``). LC-Rec has no timestamps, so every row's ``timestamp`` is -1.

Example::

    built = import_lcrec("data/Instruments", "Instruments", max_history=20)
    write_rec_dataset(built, "artifacts/data/instruments")
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

from data_builders.dataset import BuiltDataset, Item, data_error
from data_builders.reading import MISSING_MARKERS, clean_list, clean_text, find_plain_or_gz, read_json, sha256_content
from data_builders.splits import leave_one_out_rows

log = logging.getLogger(__name__)

_INT_ID = re.compile(r"-?\d+")
# LC-Rec joins a category path with "," but Amazon category names themselves contain ", ".
_CATEGORY_SEP = re.compile(r",(?!\s)")


def locate(data_dir: Path, name: str, kind: str, required: bool = False) -> Path | None:
    """``<data_dir>/<name>.<kind>.json`` or its ``.gz``; both present is ambiguous and an error."""
    return find_plain_or_gz(data_dir, f"{name}.{kind}.json", required)


def _as_item_id(value: Any, path: Path, record: str) -> str:
    """JSON ints become strings (LC-Rec ids are ints in inter.json and string keys in item.json)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise data_error(path, record, f"item ids should be non-empty strings or ints, got {value!r}")
    return str(value)


def _expect_object(obj: Any, path: Path, what: str) -> dict:
    if not isinstance(obj, dict):
        raise data_error(path, None, f"expected a JSON object {what}, got {type(obj).__name__}")
    return obj


def read_inter(path: Path) -> dict[str, list[str]]:
    """``{user: [item ids]}`` in file order, ids as strings."""
    inter = _expect_object(read_json(path), path, "{user: [item ids]}")
    sequences: dict[str, list[str]] = {}
    for user, items in inter.items():
        record = f"user {user!r}"
        if not isinstance(items, list):
            raise data_error(path, record, f"expected a list of item ids, got {type(items).__name__}")
        sequences[user] = [_as_item_id(item, path, record) for item in items]
    if not sequences:
        raise data_error(path, None, "no users (empty object)")
    return sequences


def _categories(value: Any, path: Path, record: str) -> list[str]:
    if isinstance(value, str) and not value.strip().startswith("["):
        parts = (part.strip() for part in _CATEGORY_SEP.split(value))
        return [part for part in parts if part.lower() not in MISSING_MARKERS]
    return clean_list(value, path, record, "categories")


def read_items(path: Path, domain: str) -> dict[str, Item]:
    """``{item id: Item}`` from ``item.json`` with normalised text fields."""
    raw = _expect_object(read_json(path), path, "{item: {title, description, brand, categories}}")
    items: dict[str, Item] = {}
    for item_id, meta in raw.items():
        record = f"item {item_id!r}"
        if not isinstance(meta, dict):
            raise data_error(path, record, f"expected an object of item fields, got {type(meta).__name__}")
        items[item_id] = Item(
            item_id,
            domain,
            title=clean_text(meta.get("title"), path, record, "title"),
            brand=clean_text(meta.get("brand"), path, record, "brand"),
            categories=_categories(meta.get("categories"), path, record),
            features=clean_list(meta.get("features"), path, record, "features"),
            description=clean_text(meta.get("description"), path, record, "description"),
        )
    return items


def sorted_item_ids(ids: set[str]) -> list[str]:
    """By integer value when every id is an integer (``"2" < "10"``), else lexicographically.

    >>> sorted_item_ids({"10", "2", "1"})
    ['1', '2', '10']
    """
    if all(_INT_ID.fullmatch(i) for i in ids):
        return sorted(ids, key=lambda i: (int(i), i))
    return sorted(ids)


def read_index(path: Path, catalogue: set[str]) -> dict[str, list[str]]:
    """Validate a SID index: every key a catalogue item, every value a non-empty list of non-empty strings."""
    index = _expect_object(read_json(path), path, "{item: [sid tokens]}")
    for key, tokens in index.items():
        record = f"key {key!r}"
        if key not in catalogue:
            raise data_error(path, record, "item is not in the catalogue (inter.json / item.json)")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise data_error(path, record, f"expected a non-empty list of SID token strings, got {tokens!r}")
    missing = len(catalogue) - len(index)
    if missing:
        log.warning("%s: %d catalogue items have no semantic ID", path, missing)
    return index


def import_lcrec(data_dir: str | Path, name: str, domain: str | None = None, max_history: int = 10) -> BuiltDataset:
    """Build a canonical dataset from an LC-Rec data directory; leave-one-out split, users with < 3 items skipped."""
    data_dir, domain = Path(data_dir), domain or name
    inter_path = locate(data_dir, name, "inter", required=True)
    item_path, index_path = locate(data_dir, name, "item"), locate(data_dir, name, "index")
    skipped: Counter = Counter()

    sequences = read_inter(inter_path)
    metadata = read_items(item_path, domain) if item_path else {}
    ids = sorted_item_ids(set(metadata) | {i for seq in sequences.values() for i in seq})
    skipped["items_without_metadata"] = sum(i not in metadata for i in ids)
    items = [metadata.get(i) or Item(i, domain) for i in ids]

    # No timestamps in LC-Rec: -1 ("unknown") rather than the position, so nobody mistakes it for time.
    timed = {user: [(item, -1) for item in seq] for user, seq in sequences.items()}
    rows = leave_one_out_rows(timed, domain, max_history, skipped)
    if not rows:
        raise data_error(inter_path, None, "every user has fewer than 3 items; nothing to split")

    source: dict[str, Any] = {
        "format": "lcrec",
        "files": {p.name: sha256_content(p) for p in (inter_path, item_path, index_path) if p is not None},
        "max_history": max_history,
        "split": "leave_one_out",
    }
    extra: dict[str, bytes] = {}
    if index_path is not None:
        index = read_index(index_path, set(ids))
        extra["sids.index.json"] = (json.dumps(index, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        source["sid_index"] = {"items": len(index), "catalogue_items_without_sid": len(ids) - len(index)}
    log.info("%s: %d users, %d items, %d rows", domain, len(sequences), len(items), len(rows))
    return BuiltDataset(items=items, rows=rows, source=source, skipped=skipped, extra_files=extra)
