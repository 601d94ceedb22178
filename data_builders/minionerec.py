"""Importer for the MiniOneRec CSV format (Amazon 2018 data released with MiniOneRec).

Files for a domain ``<name>`` (each may be gzipped, ``.gz``):

* ``<name>.item.json`` — ``{"<item_id>": {"title", "description", "brand", "categories"}}``; ``description`` is a
  stringified Python list that may contain HTML.
* ``<name>.valid.csv``, ``<name>.test.csv`` — header ``user_id,history_item_title,item_title,history_item_id,item_id,
  history_item_sid,item_sid``; ``history_item_id`` is a Python-literal list (oldest first, <= 10 items). Only
  ``user_id``, ``history_item_id`` and ``item_id`` are required.
* ``<name>.train.csv`` — optional; used verbatim when present.
* ``<name>.minionerec-sid.index.json`` or ``<name>.index.json`` — optional peer SIDs, copied into the dataset as
  ``sids.index.json``.
* ``<name>.published.json`` — optional published results on this test file (:mod:`data_builders.published`),
  recorded in the dataset's meta for the evaluation report.

Validation and test rows are kept exactly (same rows, same order, same histories). When ``train.csv`` is absent the
training split is rebuilt without leakage: for each user, the **earliest** row in valid (else test) has a history
whose every item was a training-period target, so the windows inside it (prefix -> next item) are training rows.
Rows of one user appear in chronological order in these files, so "earliest" is the first in file order.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from pathlib import Path

from data_builders.dataset import BuiltDataset, Item, Row, data_error
from data_builders.published import read_published
from data_builders.reading import (clean_list, clean_text, find_plain_or_gz, parse_literal_list, read_text,
                                   sha256_content)
from data_builders.splits import sliding_windows

REQUIRED_COLUMNS = ("user_id", "history_item_id", "item_id")


def find_file(data_dir: Path, name: str, suffix: str, required: bool = True) -> Path | None:
    """``<data_dir>/<name><suffix>`` or its ``.gz`` twin."""
    return find_plain_or_gz(data_dir, f"{name}{suffix}", required)


def _no_duplicate_keys(path: Path):
    def hook(pairs):
        keys = Counter(k for k, _ in pairs)
        dup = [k for k, c in keys.items() if c > 1]
        if dup:
            raise data_error(path, f"key {dup[0]!r}", f"duplicate key ({keys[dup[0]]} times)")
        return dict(pairs)

    return hook


def load_json_object(path: Path) -> dict:
    """A top-level JSON object; duplicate keys are an error (``json`` would silently keep the last one)."""
    try:
        obj = json.loads(read_text(path), object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as e:
        raise data_error(path, e.lineno, f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise data_error(path, None, f"expected a JSON object at top level, got {type(obj).__name__}")
    return obj


def read_items(path: Path, domain: str) -> list[Item]:
    """Items from ``<name>.item.json``; every entry needs a ``title`` key (it may be empty)."""
    items = []
    for item_id, fields in load_json_object(path).items():
        if not isinstance(fields, dict):
            raise data_error(path, f"item {item_id!r}", f"expected an object, got {type(fields).__name__}")
        if "title" not in fields:
            raise data_error(path, f"item {item_id!r}", "missing required field 'title'")
        items.append(
            Item(
                item_id=str(item_id),
                domain=domain,
                title=clean_text(fields.get("title"), path, f"item {item_id!r}", "title"),
                brand=clean_text(fields.get("brand"), path, f"item {item_id!r}", "brand"),
                categories=clean_list(fields.get("categories"), path, f"item {item_id!r}", "categories"),
                features=clean_list(fields.get("features"), path, f"item {item_id!r}", "features"),
                description=clean_text(fields.get("description"), path, f"item {item_id!r}", "description"),
            )
        )
    return items


def read_rows(path: Path, domain: str, split: str, known: set[str]) -> list[Row]:
    """Rows of one MiniOneRec CSV, exactly as stored; errors name the file and the physical line."""
    csv.field_size_limit(1 << 30)
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    header = next(reader, None)
    if header is None:
        raise data_error(path, 1, "empty file (no header)")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise data_error(path, 1, f"missing required column(s) {missing}; header is {header}")
    col = {c: header.index(c) for c in REQUIRED_COLUMNS}
    rows = []
    for k, fields in enumerate(reader):
        line = reader.line_num
        if len(fields) != len(header):
            raise data_error(path, line, f"expected {len(header)} fields, found {len(fields)} (malformed CSV row)")
        history = [str(h) for h in parse_literal_list(fields[col["history_item_id"]], path, line, "history_item_id")]
        target = fields[col["item_id"]].strip()
        if not history:
            raise data_error(path, line, "empty history")
        for item_id in [*history, target]:
            if item_id not in known:
                raise data_error(path, line, f"unknown item id {item_id!r} (not in the item file)")
        rows.append(Row(fields[col["user_id"]], domain, history, target, split, source_row=k))
    return rows


def rebuild_training_rows(valid: list[Row], test: list[Row], max_history: int) -> list[Row]:
    """Leak-free training windows: the windows inside each user's earliest valid (else test) history."""
    earliest: dict[str, Row] = {}
    for row in [*valid, *test]:  # rows of a user are chronological in each file; valid precedes test
        earliest.setdefault(row.user_id, row)
    rows = []
    for user, row in earliest.items():
        for _, hist, target in sliding_windows(row.history, max_history):
            rows.append(Row(user, row.domain, hist, target, "train"))
    return rows


def import_minionerec(
    data_dir: str | os.PathLike, name: str, domain: str | None = None, max_history: int = 10
) -> BuiltDataset:
    """Import one MiniOneRec domain. ``max_history`` applies to rebuilt training windows only.

    >>> ds = import_minionerec("data/amazon18/Office_Products", "Office_Products")  # doctest: +SKIP
    >>> sum(r.split == "test" for r in ds.rows)  # doctest: +SKIP
    4866
    """
    data_dir, domain = Path(data_dir), domain or name
    files = {
        "items": find_file(data_dir, name, ".item.json"),
        "valid": find_file(data_dir, name, ".valid.csv"),
        "test": find_file(data_dir, name, ".test.csv"),
        "train": find_file(data_dir, name, ".train.csv", required=False),
        "sids": find_file(data_dir, name, ".minionerec-sid.index.json", required=False)
        or find_file(data_dir, name, ".index.json", required=False),
    }
    items = read_items(files["items"], domain)
    known = {i.item_id for i in items}
    valid = read_rows(files["valid"], domain, "valid", known)
    test = read_rows(files["test"], domain, "test", known)
    if files["train"] is not None:
        train, how = read_rows(files["train"], domain, "train", known), "train.csv"
    else:
        train, how = rebuild_training_rows(valid, test, max_history), "rebuilt from earliest valid/test histories"
    extra = {}
    if files["sids"] is not None:
        sids = load_json_object(files["sids"])
        unknown = sorted(set(sids) - known)
        if unknown:
            raise data_error(files["sids"], f"key {unknown[0]!r}", "SID index names an item not in the item file")
        extra["sids.index.json"] = (json.dumps(sids, sort_keys=True, ensure_ascii=False) + "\n").encode()
    source = {
        "format": "minionerec",
        "name": name,
        "files": {p.name: sha256_content(p) for p in files.values() if p is not None},
        "train_split": how,
        "max_history_train": max_history,
    }
    published = find_file(data_dir, name, ".published.json", required=False)
    if published is not None:
        source["published"] = read_published(published, source["files"][files["test"].name])
    return BuiltDataset(items=items, rows=[*train, *valid, *test], source=source, extra_files=extra)
