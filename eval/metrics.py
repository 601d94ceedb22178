"""Ranking metrics for next-item recommendation with one target per row (numpy only, full-catalogue ranking).

Rules (the same for every method):

* A recommendation list is a ranked list of item-id strings, best first. **Duplicates are removed first, keeping the
  first occurrence** (so a model cannot count one hit twice; later items move up).
* **Invalid items** (strings that are not catalogue items) stay in the list: they occupy their rank position and
  can never be a hit.
* The target's rank ρ is its 1-based position in the de-duplicated list, or ∞ when absent. With one target:

      HR@K   = 1[ρ ≤ K]
      NDCG@K = 1[ρ ≤ K] / log2(ρ + 1)      (the ideal DCG is 1: one relevant item at rank 1)
      MRR@K  = 1[ρ ≤ K] / ρ

* Rows are averaged uniformly ("per row", as the published table does); :func:`per_user_mean` averages each user's
  rows first and then the users.
* Score-based models break ties before they produce a list; :func:`pessimistic_rank` is the reference rule for
  ranking a target inside a score vector (every tie counts against the target).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

KS = (1, 3, 5, 10, 20)


def dedup_first(items: Sequence[str]) -> list[str]:
    """Remove repeated ids, keeping the first occurrence. ``dedup_first(["a", "b", "a"]) == ["a", "b"]``."""
    return list(dict.fromkeys(items))


def target_ranks(ranked: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """1-based rank of each row's target in its de-duplicated list; ``inf`` when absent.

    ranked: R lists of item ids (best first); targets: R ids. Returns float64 [R].

    >>> target_ranks([["x", "x", "t"], ["t"], ["y"]], ["t", "t", "t"]).tolist()
    [2.0, 1.0, inf]
    """
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} recommendation lists for {len(targets)} targets")
    ranks = np.full(len(targets), np.inf)
    for i, (items, target) in enumerate(zip(ranked, targets)):
        unique = dedup_first(items)
        if target in unique:
            ranks[i] = unique.index(target) + 1
    return ranks


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    """HR@K per row: 1[ρ ≤ K]. ranks [R] -> [R] of 0/1."""
    return (ranks <= k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@K per row: 1[ρ ≤ K] / log2(ρ + 1). ``ndcg(np.array([1, 3, 11]), 10) -> [1.0, 0.5, 0.0]``."""
    hit = ranks <= k
    out = np.zeros(len(ranks))
    out[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return out


def mrr(ranks: np.ndarray, k: int) -> np.ndarray:
    """MRR@K per row: 1[ρ ≤ K] / ρ."""
    hit = ranks <= k
    out = np.zeros(len(ranks))
    out[hit] = 1.0 / ranks[hit]
    return out


def per_user_mean(values: np.ndarray, users: Sequence[str]) -> float:
    """Mean over users of each user's mean over rows (every user weighs the same, however many rows they have).

    >>> per_user_mean(np.array([1.0, 0.0, 0.0]), ["a", "b", "b"])   # user a: 1, user b: 0
    0.5
    """
    if len(values) == 0:
        return float("nan")
    _, inverse = np.unique(np.asarray(users), return_inverse=True)
    sums = np.bincount(inverse, weights=values)
    counts = np.bincount(inverse)
    return float(np.mean(sums / counts))


def ranking_metrics(ranks: np.ndarray, ks: Iterable[int] = KS, users: Sequence[str] | None = None) -> dict[str, float]:
    """``{"hr@K", "ndcg@K", "mrr@K"}`` for every K, averaged per row (or per user when ``users`` is given)."""
    def average(v: np.ndarray) -> float:
        if users is not None:
            return per_user_mean(v, users)
        return float(v.mean()) if len(v) else float("nan")

    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = average(hit_rate(ranks, k))
        out[f"ndcg@{k}"] = average(ndcg(ranks, k))
        out[f"mrr@{k}"] = average(mrr(ranks, k))
    return out


def invalid_rate(ranked: Sequence[Sequence[str]], catalogue: set[str], k: int) -> float:
    """Share of returned (de-duplicated) top-K entries that are not catalogue items: Σ invalid / Σ returned."""
    returned = invalid = 0
    for items in ranked:
        top = dedup_first(items)[:k]
        returned += len(top)
        invalid += sum(item not in catalogue for item in top)
    return invalid / returned if returned else 0.0


def duplicate_rate(ranked: Sequence[Sequence[str]]) -> float:
    """Share of all returned entries that repeat an earlier entry of the same list (removed before scoring)."""
    total = sum(len(items) for items in ranked)
    repeats = sum(len(items) - len(set(items)) for items in ranked)
    return repeats / total if total else 0.0


def coverage(ranked: Sequence[Sequence[str]], catalogue: set[str], k: int) -> float:
    """Coverage@K: share of catalogue items that appear in at least one de-duplicated top-K list."""
    shown = {item for items in ranked for item in dedup_first(items)[:k]}
    return len(shown & catalogue) / len(catalogue) if catalogue else 0.0


def pessimistic_rank(scores: np.ndarray, target: int) -> int:
    """Rank of ``target`` in a score vector with ties counted against it: 1 + #{j ≠ t: s_j ≥ s_t}.

    scores: [N] (higher = better). A constant-score model gets rank N, never 1.

    >>> pessimistic_rank(np.array([0.5, 0.9, 0.5]), 0)   # 0.9 beats it, the other 0.5 ties against it
    3
    """
    s = scores[target]
    return int(np.sum(scores >= s))  # counts the target itself once, i.e. 1 + the others at least as good
