"""Turning chronological user sequences into train / valid / test rows.

Two schemes, both producing sliding windows (history of at most ``max_history`` items -> next item):

* **leave-one-out** (LC-Rec, TIGER, Mini_XPERT): per user, the last item is the test target, the second-last the
  validation target, every earlier position a training target.
* **global temporal** (MiniOneRec): every window of every user is sorted by its target's timestamp and the sorted
  list is cut by ``ratios`` (default 8:1:1). A user can have rows in several splits; no row's target is later than
  any row of a later split.
"""

from __future__ import annotations

from data_builders.cli import UserError

from collections import Counter
from typing import Sequence

from data_builders.dataset import Row

# One user's interactions, oldest first: (item_id, unix_seconds or -1).
Sequence_ = Sequence[tuple[str, int]]


def sliding_windows(items: Sequence[str], max_history: int, start: int = 1, stop: int | None = None):
    """Yield ``(position, history, target)`` for targets at ``start <= position < stop``.

    >>> list(sliding_windows(["a", "b", "c"], max_history=1))
    [(1, ['a'], 'b'), (2, ['b'], 'c')]
    """
    if max_history < 1:
        raise UserError(f"max_history must be >= 1, got {max_history}")
    stop = len(items) if stop is None else stop
    for pos in range(max(start, 1), stop):
        yield pos, list(items[max(0, pos - max_history) : pos]), items[pos]


def leave_one_out_rows(
    sequences: dict[str, Sequence_], domain: str, max_history: int, skipped: Counter
) -> list[Row]:
    """Leave-one-out split. Users with fewer than 3 interactions are skipped (counted in ``skipped``)."""
    rows: list[Row] = []
    for user, seq in sequences.items():
        if len(seq) < 3:
            skipped["users_with_fewer_than_3_interactions"] += 1
            continue
        ids = [item for item, _ in seq]
        n = len(ids)
        for pos, hist, target in sliding_windows(ids, max_history):
            split = "test" if pos == n - 1 else "valid" if pos == n - 2 else "train"
            rows.append(Row(user, domain, hist, target, split, timestamp=int(seq[pos][1])))
    return rows


def temporal_split_rows(
    sequences: dict[str, Sequence_],
    domain: str,
    max_history: int,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> list[Row]:
    """Global temporal split of all sliding windows, sorted by target time (ties: user, then position)."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise UserError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    windows = []
    for user, seq in sequences.items():
        ids = [item for item, _ in seq]
        for pos, hist, target in sliding_windows(ids, max_history):
            windows.append((int(seq[pos][1]), user, pos, hist, target))
    windows.sort(key=lambda w: (w[0], w[1], w[2]))
    n = len(windows)
    n_train = int(round(n * ratios[0]))
    n_valid = int(round(n * (ratios[0] + ratios[1]))) - n_train
    rows = []
    for k, (ts, user, _pos, hist, target) in enumerate(windows):
        split = "train" if k < n_train else "valid" if k < n_train + n_valid else "test"
        rows.append(Row(user, domain, hist, target, split, timestamp=ts))
    return rows
