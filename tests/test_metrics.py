"""Ranking metrics against hand-computed values; the tie rule of top-k against a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval import metrics as M
from eval.recommenders import CandidateRule, Catalogue, Query, apply_rule, top_k_from_scores


def test_rank_dedup_keeps_first_occurrence_and_invalid_items_occupy_positions():
    # [x, x, BAD, t]: dedup -> [x, BAD, t], so t is at rank 3 (BAD keeps its slot, the repeat of x does not).
    ranks = M.target_ranks([["x", "x", "BAD", "t"], ["t", "t"], ["y", "z"]], ["t", "t", "t"])
    assert ranks.tolist() == [3.0, 1.0, math.inf]


def test_hr_ndcg_mrr_by_hand():
    ranks = np.array([1.0, 3.0, 10.0, 11.0, math.inf])
    assert M.hit_rate(ranks, 10).tolist() == [1, 1, 1, 0, 0]
    # NDCG@K = 1/log2(rank + 1): rank 1 -> 1, rank 3 -> 1/2, rank 10 -> 1/log2(11); beyond K -> 0.
    np.testing.assert_allclose(M.ndcg(ranks, 10), [1.0, 0.5, 1 / math.log2(11), 0.0, 0.0])
    np.testing.assert_allclose(M.mrr(ranks, 10), [1.0, 1 / 3, 0.1, 0.0, 0.0])
    assert M.hit_rate(ranks, 1).tolist() == [1, 0, 0, 0, 0]  # rank 3 is beyond K = 1
    table = M.ranking_metrics(ranks, ks=(3,))
    assert table == pytest.approx({"hr@3": 2 / 5, "ndcg@3": 1.5 / 5, "mrr@3": (1 + 1 / 3) / 5})


def test_duplicated_hit_counts_once():
    # A model repeating the target cannot score twice: HR is 0/1 per row.
    ranks = M.target_ranks([["t", "t", "t"]], ["t"])
    assert M.ranking_metrics(ranks, ks=(3,))["hr@3"] == 1.0


def test_per_user_vs_per_row_averaging():
    # user a: one row, hit; user b: three rows, no hits. Per row 1/4, per user (1 + 0) / 2.
    ranks = np.array([1.0, math.inf, math.inf, math.inf])
    users = ["a", "b", "b", "b"]
    assert M.ranking_metrics(ranks, ks=(10,))["hr@10"] == pytest.approx(0.25)
    assert M.ranking_metrics(ranks, ks=(10,), users=users)["hr@10"] == pytest.approx(0.5)
    assert M.per_user_mean(np.array([1.0, 0.0, 1.0]), ["a", "b", "b"]) == pytest.approx(0.75)


def test_invalid_duplicate_and_coverage_rates():
    catalogue = {"a", "b", "c", "d"}
    lists = [["a", "BAD", "a", "b"], ["c", "c"]]
    # de-duplicated top-3: [a, BAD, b] and [c] -> 1 invalid of 4 returned.
    assert M.invalid_rate(lists, catalogue, 3) == pytest.approx(1 / 4)
    assert M.duplicate_rate(lists) == pytest.approx(2 / 6)
    assert M.coverage(lists, catalogue, 3) == pytest.approx(3 / 4)  # a, b, c shown; d never
    assert M.coverage(lists, catalogue, 1) == pytest.approx(2 / 4)


def test_pessimistic_rank_counts_ties_against_the_target():
    assert M.pessimistic_rank(np.array([0.5, 0.9, 0.5]), 0) == 3
    assert M.pessimistic_rank(np.array([0.5, 0.9, 0.5]), 1) == 1
    assert M.pessimistic_rank(np.zeros(100), 7) == 100  # a constant model never "hits" by tie order


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 recommendation lists for 1 targets"):
        M.target_ranks([["a"], ["b"]], ["a"])


def slow_top_k(row: np.ndarray, k: int, tie_order: np.ndarray) -> list[int]:
    """Reference: walk the items in tie order, keep the finite ones, stable-sort by score descending."""
    allowed = [int(i) for i in tie_order if np.isfinite(row[i])]
    return sorted(allowed, key=lambda i: -row[i])[:k]  # Python's sort is stable: ties keep the tie order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_matches_slow_reference_with_ties_and_masks(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(20, 30)).astype(float)  # many ties
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[0] = -np.inf
    scores[0, :3] = 1.0  # fewer allowed items than k
    tie_order = rng.permutation(30)
    fast = top_k_from_scores(scores, 8, tie_order)
    for b in range(len(scores)):
        assert fast[b].tolist() == slow_top_k(scores[b], 8, tie_order)
    assert len(fast[0]) == 3


def test_candidate_rule_same_domain_and_history():
    cat = Catalogue(["A:1", "A:2", "B:1"], ["A", "A", "B"])
    q = Query(0, "u", "A", ("A:1",))
    lists = [["A:1", "B:1", "A:2", "UNKNOWN"]]
    assert apply_rule(lists, [q], CandidateRule(), cat) == [["A:1", "A:2", "UNKNOWN"]]
    assert apply_rule(lists, [q], CandidateRule(exclude_history=True), cat) == [["A:2", "UNKNOWN"]]
    assert apply_rule(lists, [q], CandidateRule(same_domain=False), cat) == lists
    mask = cat.candidate_mask([q], CandidateRule(exclude_history=True))
    assert mask.tolist() == [[False, True, False]]
