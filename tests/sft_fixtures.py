"""Tiny datasets + SID artifacts on disk for SFT / RL / decoding tests (seconds, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import write_minionerec
from data_builders.dataset import write_rec_dataset
from data_builders.merge import merge_datasets
from data_builders.minionerec import import_minionerec
from tokenization.artifact import write_sid_artifact


def make_tiny_pipeline(root: Path, domains: tuple[str, ...] = ("Mini",)) -> tuple[Path, Path]:
    """``(dataset_dir, sid_dir)``: 6 items per domain; item k of the catalogue gets SID (k // 3, k % 3)."""
    parts = [import_minionerec(write_minionerec(root / "src" / d, name=d), d) for d in domains]
    built = parts[0] if len(parts) == 1 else merge_datasets(parts)
    write_rec_dataset(built, root / "dataset")
    item_ids = [i.item_id for i in built.items]
    codes = np.array([[k // 3, k % 3] for k in range(len(item_ids))])
    write_sid_artifact(root / "sids", item_ids, codes, {"codebook_sizes": [len(item_ids) // 3, 3],
                                                        "algorithm": "handmade", "dataset": str(root / "dataset")})
    return root / "dataset", root / "sids"
