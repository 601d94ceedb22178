"""Row slices for diagnosing where a method wins: cold-start vs warm targets, head vs tail targets, short vs long
histories. Item frequency = times the item is a target in the training rows (one count per interaction)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np


def head_items(counts: Counter, item_ids: Sequence[str], share: float) -> set[str]:
    """The top ``share`` of catalogue items by training frequency (ties: catalogue order, so exactly ⌈share·N⌉).

    >>> sorted(head_items(Counter({"b": 5, "c": 2}), ["a", "b", "c", "d", "e"], 0.2))
    ['b']
    """
    n_head = int(np.ceil(share * len(item_ids)))
    order = sorted(range(len(item_ids)), key=lambda i: (-counts.get(item_ids[i], 0), i))
    return {item_ids[i] for i in order[:n_head]}


def slice_masks(targets: Sequence[str], histories: Sequence[Sequence[str]], counts: Counter,
                item_ids: Sequence[str], cold_max: int, head_share: float, short_max: int,
                known: set[str] | None = None) -> dict[str, np.ndarray]:
    """``{slice name: bool [R]}`` over the evaluated rows; each pair of slices partitions the rows. With ``known``
    (the items of the training rows) and some target outside it, also new vs seen targets: items no training row
    has, which only content (text, SIDs) can recommend."""
    freq = np.array([counts.get(t, 0) for t in targets])
    head = head_items(counts, item_ids, head_share)
    is_head = np.array([t in head for t in targets], dtype=bool)
    length = np.array([len(h) for h in histories])
    pct = round(100 * head_share)
    new = {}
    if known is not None and any(t not in known for t in targets):
        is_new = np.array([t not in known for t in targets], dtype=bool)
        new = {NEW_TARGET: is_new, "seen target (in training rows)": ~is_new}
    return {
        f"cold target (<={cold_max} train)": freq <= cold_max,
        f"warm target (>{cold_max} train)": freq > cold_max,
        f"head target (top {pct}%)": is_head,
        f"tail target (bottom {100 - pct}%)": ~is_head,
        f"short history (<={short_max})": length <= short_max,
        f"long history (>{short_max})": length > short_max,
        **new,
    }


NEW_TARGET = "new target (in no training row)"


def training_items(train_rows: Sequence[dict]) -> set[str]:
    """Every item of the training rows (histories and targets)."""
    out: set[str] = set()
    for r in train_rows:
        out.update(r["history"])
        out.add(r["target"])
    return out
