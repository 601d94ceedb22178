"""Inputs of a SID build: the dataset's items (ids, titles, domains, user histories) and their embeddings, checked.

Bad input fails here with a message naming the file and the item: NaN/inf or zero-norm rows, a dimension that
disagrees with meta.json, duplicate item ids, embeddings built from another dataset, fewer items than codes.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_builders.dataset import DataError, RecDataset, load_rec_dataset, sha256_file

ZERO_NORM = 1.0e-8


@dataclass
class BuildInputs:
    """Items to tokenise (``rows`` into the dataset's items table) and their embeddings float32 [N, d] (or None)."""

    dataset: RecDataset
    item_ids: list[str]
    rows: np.ndarray
    embeddings: np.ndarray | None
    embeddings_meta: dict
    embeddings_sha256: str | None


def check_item_ids(item_ids: Sequence[str], where: str) -> None:
    """DataError on a duplicate or empty id (names the first one and its rows)."""
    seen: dict[str, int] = {}
    for i, item_id in enumerate(item_ids):
        if not item_id:
            raise DataError(f"{where}, item #{i}: empty item id")
        if item_id in seen:
            raise DataError(f"{where}, item #{i}: duplicate item id {item_id!r} (first at #{seen[item_id]})")
        seen[item_id] = i


def check_embeddings(
    x: np.ndarray, item_ids: Sequence[str], where: str, dim: int | None = None, min_items: int = 1
) -> None:
    """DataError unless x is a finite float matrix [len(item_ids), dim] without zero-norm rows and has at least
    ``min_items`` rows (the largest codebook: k-means cannot fit K codes on fewer than K items)."""
    if x.ndim != 2:
        raise DataError(f"{where}: embeddings must be a 2-D matrix [items, dim], got shape {x.shape}")
    if len(x) != len(item_ids):
        raise DataError(f"{where}: {len(x)} embedding rows but {len(item_ids)} items")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{where}: embedding dimension {x.shape[1]} does not match meta.json dim {dim}")
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{where}: {int(bad.sum())} rows hold NaN/inf, first row {row} (item {item_ids[row]!r})")
    zero = np.linalg.norm(x, axis=1) < ZERO_NORM
    if zero.any():
        row = int(np.argmax(zero))
        raise DataError(f"{where}: {int(zero.sum())} rows have zero norm, first row {row} (item {item_ids[row]!r})")
    if len(x) < min_items:
        raise DataError(f"{where}: {len(x)} items are fewer than the {min_items} codes of a codebook; "
                        "use a smaller codebook_size")


def read_embeddings_dir(path: str | os.PathLike, dataset: RecDataset) -> tuple[np.ndarray, dict]:
    """``(embeddings [N, d], meta)`` via :func:`data_builders.embeddings.load_item_embeddings`, plus an item-id
    hash check when meta.json records one."""
    from data_builders.embeddings import load_item_embeddings

    x, meta = load_item_embeddings(path, dataset)
    ids_hash = hashlib.sha256("\n".join(dataset.item_ids).encode()).hexdigest()
    if meta.get("item_ids_sha256") not in (None, ids_hash):
        raise DataError(f"{path}/meta.json: item_ids_sha256 does not match the items of {dataset.path}")
    return x, meta


def load_build_inputs(
    dataset_path: str | os.PathLike, embeddings_path: str | os.PathLike | None, domains: Sequence[str] = (),
    min_items: int = 1, seen_in: Sequence[str] = (),
) -> BuildInputs:
    """Load the dataset (optionally only ``domains``; with ``seen_in`` splits only the items of some row of them) and,
    if given, its embeddings; validate both."""
    dataset = load_rec_dataset(dataset_path)
    all_ids = list(dataset.item_ids)
    check_item_ids(all_ids, f"{dataset_path}/items.parquet")
    rows = np.arange(len(all_ids))
    if domains:
        item_domains = np.asarray(dataset.items["domain"])
        unknown = sorted(set(domains) - set(item_domains.tolist()))
        if unknown:
            raise DataError(f"{dataset_path}: unknown domains {unknown}; the dataset has {sorted(set(item_domains))}")
        rows = np.flatnonzero(np.isin(item_domains, list(domains)))
    if seen_in:
        seen = items_of_splits(dataset, seen_in)
        rows = np.array([i for i in rows if all_ids[i] in seen], dtype=np.int64)
    item_ids = [all_ids[i] for i in rows]
    x, meta, sha = None, {}, None
    if embeddings_path:
        x, meta = read_embeddings_dir(embeddings_path, dataset)
        check_embeddings(x, all_ids, f"{embeddings_path}/embeddings.npy", dim=meta.get("dim"))
        x = np.ascontiguousarray(x[rows], dtype=np.float32)
        sha = sha256_file(Path(embeddings_path) / "embeddings.npy")
    if len(item_ids) < min_items:
        raise DataError(f"{dataset_path}: {len(item_ids)} items are fewer than the {min_items} codes of a "
                        "codebook; use a smaller codebook_size")
    return BuildInputs(dataset, item_ids, rows, x, meta, sha)


def items_of_splits(dataset: RecDataset, splits: Sequence[str]) -> set[str]:
    """Items of some row (history or target) of ``splits``, e.g. (train, valid): what was known before the test
    period began."""
    seen: set[str] = set()
    for split in splits:
        table = dataset.splits[split]
        for history, target in zip(table["history"], table["target"]):
            seen.update(history)
            seen.add(target)
    return seen


def item_users(dataset: RecDataset, item_ids: Sequence[str], split: str = "train") -> list[frozenset]:
    """For each item, the users whose ``split`` rows (history + target) contain it."""
    index = {item_id: i for i, item_id in enumerate(item_ids)}
    users: dict[int, set] = defaultdict(set)
    table = dataset.splits[split]
    for user, history, target in zip(table["user_id"], table["history"], table["target"]):
        for item_id in [*history, target]:
            if item_id in index:
                users[index[item_id]].add(user)
    return [frozenset(users.get(i, ())) for i in range(len(item_ids))]


def item_titles(dataset: RecDataset, item_ids: Sequence[str]) -> list[str]:
    """Titles of ``item_ids`` ("" when missing), in that order."""
    title_of = dict(zip(dataset.items["item_id"], dataset.items["title"]))
    return [title_of.get(item_id) or "" for item_id in item_ids]
