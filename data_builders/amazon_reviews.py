"""Importer for the raw Amazon Reviews dumps (2018 and 2023): reviews + item metadata, JSON lines, plain or .gz.

Pipeline (every drop is counted in ``BuiltDataset.skipped``)::

    read reviews -> time window [start, end) -> drop items without a metadata title -> dedupe (user, item),
    keeping the earliest -> iterative k-core -> per-user chronological order -> leave-one-out or temporal split

Example::

    built = import_amazon_reviews("Video_Games.jsonl.gz", "meta_Video_Games.jsonl.gz", domain="games")
    write_rec_dataset(built, "artifacts/data/games")

Timestamps end up in unix seconds (2023 dumps store milliseconds). Rows are rebuilt windows, so ``source_row`` is -1.
Metadata fields are normalised by :func:`data_builders.reading.clean_text` / :func:`~data_builders.reading.clean_list`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from tqdm import tqdm

from data_builders.dataset import BuiltDataset, DataError, Item, data_error
from data_builders.reading import clean_list, clean_text, read_jsonl, sha256_content
from data_builders.splits import leave_one_out_rows, temporal_split_rows

log = logging.getLogger(__name__)

# One interaction while filtering: (user_id, item_id, unix_seconds, line_number). The line number breaks ties
# between equal timestamps so the order is the file order (stable), whatever sorting happens later.
Interaction = tuple[str, str, int, int]


@dataclass(frozen=True)
class Layout:
    """Field names of one dump version."""

    format: str
    user: str
    item: str
    time: str
    time_divisor: int  # source time / divisor = unix seconds
    meta_item: str
    meta_fields: dict[str, str]  # Item field -> source field


LAYOUTS = {
    "2018": Layout(
        "amazon2018", "reviewerID", "asin", "unixReviewTime", 1, "asin",
        {"title": "title", "brand": "brand", "categories": "category", "features": "feature",
         "description": "description"},
    ),
    "2023": Layout(
        "amazon2023", "user_id", "parent_asin", "timestamp", 1000, "parent_asin",
        {"title": "title", "brand": "store", "categories": "categories", "features": "features",
         "description": "description"},
    ),
}
_LIST_FIELDS = ("categories", "features")


# ---------------------------------------------------------------------------------------------------------------
# Reading


def parse_time_bound(value: str | int | None, name: str) -> int | None:
    """``'YYYY-MM-DD'`` (UTC midnight), an ISO datetime, or unix seconds (int or digits) -> unix seconds.

    >>> parse_time_bound("2020-01-01", "start")
    1577836800
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise DataError(f"{name}={value!r}: expected an ISO date 'YYYY-MM-DD' or unix seconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return int(moment.timestamp())
    raise DataError(f"{name}={value!r}: expected an ISO date 'YYYY-MM-DD' or unix seconds")


def detect_version(path: str | Path) -> str:
    """'2018' or '2023', from the keys of the first record of a reviews file."""
    for line, record in read_jsonl(path):
        if "parent_asin" in record or "user_id" in record:
            return "2023"
        if "reviewerID" in record:
            return "2018"
        raise data_error(
            path, line, f"cannot tell the Amazon Reviews version from keys {sorted(record)}; "
            "expected 'reviewerID' (2018) or 'user_id'/'parent_asin' (2023), or pass version="
        )
    raise DataError(f"{path}: no reviews (empty file)")


def _progress(records: Iterator, path: Path, show: bool) -> Iterator:
    return tqdm(records, desc=path.name, unit=" lines", disable=not show, mininterval=1.0)


def _required(record: dict, field: str, path: Path, line: int, layout: Layout) -> Any:
    if field not in record or record[field] is None:
        other = "2023" if layout.format == "amazon2018" else "2018"
        raise data_error(
            path, line, f"missing required field {field!r} ({layout.format}; if this is a {other} dump pass "
            f"version={other!r} or 'auto')"
        )
    return record[field]


def _as_id(value: Any, field: str, path: Path, line: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise data_error(path, line, f"field {field!r} should be a non-empty string id, got {value!r}")
    return str(value)


def _as_seconds(value: Any, field: str, divisor: int, path: Path, line: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise data_error(path, line, f"field {field!r} should be a unix timestamp, got {value!r}")
    return int(value) // divisor


def read_reviews(
    path: Path, layout: Layout, window: tuple[int | None, int | None], skipped: Counter, show_progress: bool
) -> list[Interaction]:
    """Interactions inside the time window ``[start, end)``, in file order."""
    start, end = window
    out: list[Interaction] = []
    outside = 0
    for line, record in _progress(read_jsonl(path), path, show_progress):
        user = _as_id(_required(record, layout.user, path, line, layout), layout.user, path, line)
        item = _as_id(_required(record, layout.item, path, line, layout), layout.item, path, line)
        raw_time = _required(record, layout.time, path, line, layout)
        ts = _as_seconds(raw_time, layout.time, layout.time_divisor, path, line)
        if (start is not None and ts < start) or (end is not None and ts >= end):
            outside += 1
            continue
        out.append((user, item, ts, line))
    skipped["reviews_outside_time_window"] = outside
    return out


def read_meta(
    path: Path, layout: Layout, wanted: set[str], domain: str, skipped: Counter, show_progress: bool
) -> dict[str, Item]:
    """Items for the ids in ``wanted`` (others are not normalised). Repeated records: the first one wins."""
    items: dict[str, Item] = {}
    duplicates = 0
    for line, record in _progress(read_jsonl(path), path, show_progress):
        item_id = _as_id(_required(record, layout.meta_item, path, line, layout), layout.meta_item, path, line)
        if item_id not in wanted:
            continue
        if item_id in items:
            duplicates += 1
            continue
        fields: dict[str, Any] = {}
        for name, source in layout.meta_fields.items():
            clean = clean_list if name in _LIST_FIELDS else clean_text
            fields[name] = clean(record.get(source), path, line, source)
        items[item_id] = Item(item_id, domain, **fields)
    skipped["meta_duplicate_records"] = duplicates
    return items


# ---------------------------------------------------------------------------------------------------------------
# Filtering


def drop_items_without_title(inters: list[Interaction], meta: dict[str, Item], skipped: Counter) -> list[Interaction]:
    """Keep interactions whose item has a metadata record with a non-empty title."""
    kept = [x for x in inters if x[1] in meta and meta[x[1]].title]
    skipped["interactions_on_items_without_metadata_title"] = len(inters) - len(kept)
    skipped["items_without_metadata_title"] = len({x[1] for x in inters} - {x[1] for x in kept})
    return kept


def dedupe_interactions(inters: list[Interaction], skipped: Counter) -> list[Interaction]:
    """Keep the earliest (time, then file order) interaction of each (user, item) pair; output is time-sorted."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for x in sorted(inters, key=lambda x: (x[2], x[3])):
        if (x[0], x[1]) not in seen:
            seen.add((x[0], x[1]))
            kept.append(x)
    skipped["duplicate_interactions"] = len(inters) - len(kept)
    return kept


def k_core_filter(inters: list[Interaction], k: int, skipped: Counter) -> list[Interaction]:
    """Iterative k-core: drop users and items with < k interactions until none is left to drop.

    One pass is not enough: removing a sparse item can push one of its users under ``k`` (and so on).
    """
    users_before, items_before, n_before = {x[0] for x in inters}, {x[1] for x in inters}, len(inters)
    passes = 0
    while k > 1:
        passes += 1
        per_user = Counter(x[0] for x in inters)
        per_item = Counter(x[1] for x in inters)
        kept = [x for x in inters if per_user[x[0]] >= k and per_item[x[1]] >= k]
        if len(kept) == len(inters):
            break
        inters = kept
    log.info("k-core %d: stable after %d pass(es), %d interactions left", k, passes, len(inters))
    skipped["kcore_removed_users"] = len(users_before) - len({x[0] for x in inters})
    skipped["kcore_removed_items"] = len(items_before) - len({x[1] for x in inters})
    skipped["kcore_removed_interactions"] = n_before - len(inters)
    return inters


def user_sequences(inters: list[Interaction]) -> dict[str, list[tuple[str, int]]]:
    """user -> [(item, seconds)], oldest first (ties: file order); users sorted so row order is deterministic."""
    by_user: dict[str, list[Interaction]] = {}
    for x in inters:
        by_user.setdefault(x[0], []).append(x)
    return {
        user: [(x[1], x[2]) for x in sorted(by_user[user], key=lambda x: (x[2], x[3]))] for user in sorted(by_user)
    }


def _require_some(inters: list, path: Path, problem: str) -> None:
    if not inters:
        raise data_error(path, None, problem)


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def _resolve_layout(reviews: Path, version: str) -> Layout:
    if version == "auto":
        version = detect_version(reviews)
    if version not in LAYOUTS:
        raise DataError(f"version must be '2018', '2023' or 'auto', got {version!r}")
    return LAYOUTS[version]


def _filter(
    inters: list[Interaction], meta: dict[str, Item], reviews: Path, meta_path: Path | None,
    k: int, require_metadata: bool, do_dedupe: bool, skipped: Counter,
) -> list[Interaction]:
    """Metadata filter -> dedupe -> k-core, failing with a hint when a step empties the data."""
    if require_metadata:
        inters = drop_items_without_title(inters, meta, skipped)
        _require_some(inters, reviews, f"no reviewed item has a metadata title in {meta_path}; check that the "
                                       "meta file belongs to these reviews, or pass require_metadata=False")
    inters = dedupe_interactions(inters, skipped) if do_dedupe else sorted(inters, key=lambda x: (x[2], x[3]))
    inters = k_core_filter(inters, k, skipped)
    _require_some(inters, reviews, f"k-core {k} removed every user; lower k_core")
    return inters


def import_amazon_reviews(
    reviews: str | Path,
    meta: str | Path | None,
    domain: str,
    version: Literal["2018", "2023", "auto"] = "auto",
    k_core: int = 5,
    start: str | int | None = None,
    end: str | int | None = None,
    split: Literal["leave_one_out", "temporal"] = "leave_one_out",
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    max_history: int = 10,
    require_metadata: bool = True,
    dedupe: bool = True,
    show_progress: bool = True,
) -> BuiltDataset:
    """Build a canonical dataset from raw Amazon Reviews 2018 / 2023 files (see the module docstring)."""
    reviews, meta_path = Path(reviews), Path(meta) if meta is not None else None
    if split not in ("leave_one_out", "temporal"):
        raise DataError(f"split must be 'leave_one_out' or 'temporal', got {split!r}")
    if require_metadata and meta_path is None:
        raise DataError("require_metadata=True needs a meta file; pass meta=... or require_metadata=False")
    window = (parse_time_bound(start, "start"), parse_time_bound(end, "end"))
    if None not in window and window[0] >= window[1]:
        raise DataError(f"empty time window: start={start!r} is not before end={end!r}")
    layout = _resolve_layout(reviews, version)
    skipped: Counter = Counter()

    inters = read_reviews(reviews, layout, window, skipped, show_progress)
    _require_some(inters, reviews, "no reviews" if window == (None, None) else
                  f"no reviews inside the time window [{start}, {end}); widen start/end")
    items = {} if meta_path is None else read_meta(
        meta_path, layout, {x[1] for x in inters}, domain, skipped, show_progress
    )
    inters = _filter(inters, items, reviews, meta_path, k_core, require_metadata, dedupe, skipped)

    sequences = user_sequences(inters)
    if split == "leave_one_out":
        rows = leave_one_out_rows(sequences, domain, max_history, skipped)
    else:
        rows = temporal_split_rows(sequences, domain, max_history, tuple(ratios))
    _require_some(rows, reviews, "no user has enough interactions to build a row; lower k_core or widen the window")

    item_ids = sorted({x[1] for x in inters})
    skipped["items_without_metadata"] = sum(i not in items for i in item_ids)
    source = {
        "format": layout.format,
        "files": {p.name: sha256_content(p) for p in (reviews, meta_path) if p is not None},
        "k_core": k_core,
        "time_window": {"start": window[0], "end": window[1]},
        "split": split,
        "max_history": max_history,
        "require_metadata": require_metadata,
        "dedupe": dedupe,
        **({"ratios": list(ratios)} if split == "temporal" else {}),
    }
    catalogue = [items.get(i) or Item(i, domain) for i in item_ids]
    log.info("%s: %d users, %d items, %d rows", domain, len(sequences), len(catalogue), len(rows))
    return BuiltDataset(items=catalogue, rows=rows, source=source, skipped=skipped)
