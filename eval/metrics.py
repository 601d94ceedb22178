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
* **Ties never favour the target.** A score-based method returns a :class:`~eval.recommenders.RankedList` (its ids
  with the score of each); the target then ranks after every candidate with the same score, as
  :func:`pessimistic_rank` ranks it inside the full score vector (:func:`tied_rank`). Which of several tied items
  fill the list's last places is decided by the catalogue's seeded order, but the target gains nothing from it: a
  constant-score model never hits. Plain lists (generative decoding, predictions files) are ranked by position.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

KS = (1, 3, 5, 10, 20)


def dedup_first(items: Sequence[str]) -> list[str]:
    """Remove repeated ids, keeping the first occurrence. ``dedup_first(["a", "b", "a"]) == ["a", "b"]``."""
    return list(dict.fromkeys(items))


def target_ranks(ranked: Sequence[Sequence[str]], targets: Sequence[str],
                 candidates: Sequence[int] | None = None) -> np.ndarray:
    """1-based rank of each row's target in its de-duplicated list; ``inf`` when absent.

    ranked: R lists of item ids (best first); targets: R ids. Returns float64 [R]. A list with a ``scores``
    attribute (a :class:`~eval.recommenders.RankedList`) is ranked by :func:`tied_rank` (ties against the target);
    ``candidates`` [R] = how many items each row ranks among (unknown: a tie reaching a list's end is a miss).

    >>> target_ranks([["x", "x", "t"], ["t"], ["y"]], ["t", "t", "t"]).tolist()
    [2.0, 1.0, inf]
    """
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} recommendation lists for {len(targets)} targets")
    ranks = np.full(len(targets), np.inf)
    for i, (items, target) in enumerate(zip(ranked, targets)):
        scores = getattr(items, "scores", None)
        if scores is not None:
            ranks[i] = tied_rank(items, scores, target, None if candidates is None else int(candidates[i]),
                                 getattr(items, "next_score", None))
            continue
        unique = dedup_first(items)
        if target in unique:
            ranks[i] = unique.index(target) + 1
    return ranks


def tied_rank(items: Sequence[str], scores: Sequence[float], target: str, candidates: int | None,
              next_score: float | None = None) -> float:
    """The target's rank in a score-ranked top list with every tie counted against it; ``inf`` when absent.

    items: the top of one score ranking (best first, repeats ignored) with ``scores`` aligned; candidates: how many
    items the row ranks among; next_score: a bound on the score of every candidate not listed (``-inf``: none is
    left out; None: the last listed score). rank = #{listed items scoring ≥ the target} (itself included), i.e.
    :func:`pessimistic_rank` restricted to the list — unless an unlisted item may tie with the target
    (``next_score`` ≥ its score): then every candidate counts against it (rank = ``candidates``; ``inf`` when
    unknown), so a model that scores everything the same ranks the target last, never at a lucky list position.

    >>> tied_rank(["a", "t", "b", "c"], [0.9, 0.5, 0.5, 0.1], "t", 10)   # b ties against t
    3.0
    >>> tied_rank(["a", "t", "b"], [0.5, 0.5, 0.5], "t", 10)             # 7 unlisted items may tie too
    10.0
    >>> tied_rank(["a", "t", "b"], [0.5, 0.5, 0.5], "t", 10, next_score=0.2)  # the 4th best scores lower
    3.0
    """
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} scores")
    first: dict[str, float] = {}
    for item, score in zip(items, scores):
        first.setdefault(item, float(score))
    if target not in first:
        return float("inf")
    values = np.fromiter(first.values(), dtype=np.float64, count=len(first))
    s = first[target]
    if next_score is None:
        next_score = float(scores[-1])
    if next_score >= s and (candidates is None or len(values) < candidates):
        return float("inf") if candidates is None else float(candidates)
    return float(np.sum(values >= s))


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
