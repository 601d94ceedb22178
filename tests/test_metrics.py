"""Ranking metrics against hand-computed values; the tie rule of top-k against a slow reference; ties counted
against the target through the evaluator for every score-based method."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from eval import evaluate as E
from eval import metrics as M
from eval.recommenders import (CandidateRule, Catalogue, PopularityRecommender, Query, RankedList, apply_rule,
                               candidate_counts, ranked_lists, top_k_from_scores)


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


# --- ties never favour the target, through the evaluator (eval/evaluate.py), for every score-based method --------

def tie_dataset(n_items: int = 24, domains=("A", "B")):
    ids = [f"{d}:{j}" for d in domains for j in range(n_items)]
    return types.SimpleNamespace(item_ids=ids, items={
        "item_id": ids, "domain": [i.split(":")[0] for i in ids],
        "brand": [f"brand{j % 4}" for j in range(len(ids))], "categories": [[] for _ in ids]})


def tie_rows(n: int, n_items: int = 24, domains=("A", "B"), seed: int = 0) -> E.EvalRows:
    rng = np.random.default_rng(seed)
    queries, targets = [], []
    for i in range(n):
        d = domains[i % len(domains)]
        hist = tuple(f"{d}:{j}" for j in rng.integers(n_items, size=int(rng.integers(1, 5))))
        queries.append(Query(i, f"u{i}", d, hist))
        targets.append(f"{d}:{int(rng.integers(n_items))}")
    return E.EvalRows(queries, targets)


def evaluate(rec, dataset, rows: E.EvalRows, ks=(10, 20), rule=CandidateRule()) -> dict:
    """What eval.run does per method: collect every row's list, score them (the candidate rule applied again)."""
    catalogue = Catalogue.from_dataset(dataset)
    k = E.request_size(ks, rule, max(len(q.history) for q in rows.queries))
    lists, _ = E.collect_lists(rec, rows, k, batch_size=16)
    return E.score_lists(lists, rows, catalogue, rule, ks, {})["by_domain"]["all"]


def constant_models(dataset, train_rows):
    """Real methods made to score every item the same: popularity without training targets, SASRec / STARS /
    the bi-encoder with an all-zero query vector (so every inner product is exactly 0)."""
    from eval.dense.recommenders import DenseConfig, DenseRecommender
    from eval.models.sasrec import SASRecConfig, SASRecRecommender
    from eval.models.stars import STARSConfig, STARSRecommender

    emb = np.random.default_rng(0).normal(size=(len(dataset.item_ids), 8)).astype(np.float32)
    fast = dict(dim=16, heads=2, dropout=0.0, epochs=1, batch_size=32)
    pop = PopularityRecommender(CandidateRule())
    pop.fit(dataset, [], None)
    sasrec = SASRecRecommender(SASRecConfig(**fast), CandidateRule())
    sasrec.fit(dataset, train_rows, None)
    sasrec.vectors = lambda queries, v=sasrec.vectors: (torch.zeros_like(v(queries)[0]), v(queries)[1])
    stars = STARSRecommender(STARSConfig(**fast), CandidateRule())
    stars.fit(dataset, train_rows, emb)
    stars.user_vectors = lambda queries: np.zeros((len(queries), stars.search_vectors.shape[1]), np.float32)
    dense = DenseRecommender(DenseConfig(), CandidateRule(), name="bi_encoder")
    dense.fit(dataset, train_rows, emb)
    dense.query_vectors = lambda queries: np.zeros((len(queries), 8), np.float32)
    return [pop, sasrec, stars, dense]


def test_a_constant_score_model_never_hits_through_the_evaluator():
    """24 items per domain, HR@10: a seeded tie order would put the target in the top 10 of ~40% of the rows."""
    dataset, rows = tie_dataset(), tie_rows(200)
    train = [{"user_id": "t", "domain": q.domain, "history": list(q.history), "target": t}
             for q, t in zip(rows.queries, rows.targets)]
    for rec in constant_models(dataset, train):
        m = evaluate(rec, dataset, rows)
        assert m["hr@10"] == 0.0 and m["hr@20"] == 0.0 and m["mrr@20"] == 0.0, rec.name


def test_a_target_tied_with_one_other_item_at_the_cut_ranks_after_it():
    """9 items score higher, the target and one other item tie for 10th: rank 11 (HR@10 0, HR@20 1, MRR 1/11),
    whichever of the two is the target — a seeded tie order would give one of the two rows rank 10."""
    dataset = tie_dataset()
    counts = {f"A:{j}": 11 - j for j in range(9)} | {"A:9": 2, "A:10": 2}  # A:11.. never a target: 0
    train = [{"target": item} for item, n in counts.items() for _ in range(n)]
    pop = PopularityRecommender(CandidateRule())
    pop.fit(dataset, train, None)
    rows = E.EvalRows([Query(0, "u", "A", ("A:20",)), Query(1, "v", "A", ("A:21",))], ["A:9", "A:10"])
    m = evaluate(pop, dataset, rows)
    assert m["hr@10"] == 0.0 and m["hr@20"] == 1.0
    assert m["mrr@20"] == pytest.approx(1 / 11)
    # Asked for 10 only, the list ends inside the tie: the listed one of the two may have unlisted equals (rank =
    # every candidate), the other is not listed (inf); both miss at 10 whichever the tie order lists.
    ranks = M.target_ranks(pop.recommend(rows.queries, 10), rows.targets, [24, 24])
    assert sorted(ranks.tolist()) == [24.0, math.inf]


class FixedScores:
    """A scripted score-based method: row r's scores are ``table[r]`` (``-inf`` where the rule forbids)."""

    name = "fixed"

    def __init__(self, table: np.ndarray, catalogue: Catalogue, rule: CandidateRule):
        self.table, self.catalogue, self.rule = table, catalogue, rule

    def recommend(self, queries, k):
        scores = np.where(self.catalogue.candidate_mask(queries, self.rule), self.table[[q.row for q in queries]],
                          -np.inf)
        return ranked_lists(scores, k, self.catalogue)


@pytest.mark.parametrize("exclude_history", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_evaluator_ranks_equal_pessimistic_rank_in_the_full_score_vector(seed, exclude_history):
    """With many ties, every HR/MRR equals the one from ``pessimistic_rank`` over the rule's candidates."""
    dataset, rows, rule = tie_dataset(), tie_rows(60, seed=seed), CandidateRule(exclude_history=exclude_history)
    catalogue = Catalogue.from_dataset(dataset, tie_seed=seed)
    table = np.random.default_rng(seed).integers(0, 3, size=(60, len(catalogue))).astype(float)
    m = evaluate(FixedScores(table, catalogue, rule), dataset, rows, ks=(1, 5, 10), rule=rule)
    full = np.where(catalogue.candidate_mask(rows.queries, rule), table, -np.inf)
    ranks = np.array([M.pessimistic_rank(s, catalogue.index[t]) if np.isfinite(s[catalogue.index[t]]) else np.inf
                      for s, t in zip(full, rows.targets)])
    assert m == pytest.approx({**m, **M.ranking_metrics(ranks, (1, 5, 10))})


def test_a_list_holding_every_candidate_ranks_the_tie_exactly():
    """When the list is the whole candidate set, a tie at its end is not cut: rank = tied items counted."""
    assert M.tied_rank(["a", "t", "b"], [1.0, 0.0, 0.0], "t", 3) == 3.0
    assert M.tied_rank(["a", "t", "b"], [1.0, 0.0, 0.0], "t", 30) == 30.0  # 27 unlisted items may tie too
    assert M.tied_rank(["a", "t", "b"], [1.0, 0.5, 0.0], "t", 30) == 2.0  # b scores below: nothing unlisted ties
    assert M.tied_rank(["a", "b"], [1.0, 1.0], "t", 30) == math.inf


def test_ranked_lists_keep_their_scores_through_slices_and_the_candidate_rule():
    cat = Catalogue(["A:1", "A:2", "B:1"], ["A", "A", "B"])
    lst = RankedList(["A:1", "B:1", "A:2"], [3.0, 2.0, 1.0])
    assert lst[1:].scores.tolist() == [2.0, 1.0] and lst[0] == "A:1"
    kept = apply_rule([lst], [Query(0, "u", "A", ("A:1",))], CandidateRule(exclude_history=True), cat)[0]
    assert kept == ["A:2"] and kept.scores.tolist() == [1.0]
    assert candidate_counts([Query(0, "u", "A", ("A:1", "A:1", "B:1"))], cat, CandidateRule(exclude_history=True)
                            ).tolist() == [1]
