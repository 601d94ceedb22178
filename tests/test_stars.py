"""STARS-style model: learns the successor task, [USER] attention mask, faiss MIPS + filter equals brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.recommenders import CandidateRule, Query
from eval.models.stars import STARSConfig, STARSRecommender, item_tags, user_token_mask
from test_sasrec import fake_dataset, hr_at_1, queries_of, successor_task

FAST = dict(dim=32, heads=2, dropout=0.0, epochs=6, batch_size=32, lr=5.0e-3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def text_embeddings(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_stars_learns_deterministic_successor():
    train, test = successor_task(400, seed=1), successor_task(200, seed=2)
    rec = STARSRecommender(STARSConfig(**FAST), CandidateRule())
    rec.fit(fake_dataset(), train, text_embeddings(24))
    assert hr_at_1(rec, test) > 0.9
    assert rec.train_log["tags"] == 4  # brand0..brand3, 6 items each


def test_faiss_retrieval_with_prior_and_filter_matches_brute_force():
    domains = ("A", "B")
    train = successor_task(200, 1, domains=domains)
    rec = STARSRecommender(STARSConfig(**{**FAST, "epochs": 2}), CandidateRule(exclude_history=True))
    rec.fit(fake_dataset(domains), train, text_embeddings(48))
    with torch.no_grad():
        rec.model.alpha.fill_(0.7)  # make the prior matter
    rec.index = rec.build_index()
    queries = queries_of(successor_task(30, 2, domains=domains))
    got = rec.recommend(queries, 5)
    users = rec.user_vectors(queries)[:, :-1]  # h only
    items = rec.model.item_matrix()[1:].detach().numpy()
    scores = users @ items.T - 0.7 * rec.model.log_pop.numpy()[None, :]  # s_i = h·e_i − α log p̃_i
    for q, s, items_got in zip(queries, scores, got):
        allowed = [i for i, item in enumerate(rec.catalogue.item_ids)
                   if item.startswith(q.domain + ":") and item not in q.history]
        expected = [rec.catalogue.item_ids[i] for i in sorted(allowed, key=lambda i: -s[i])[:5]]
        assert items_got == expected


def test_user_token_mask():
    mask = user_token_mask(torch.tensor([[0, 5, 6]]))[0, 0]  # [1 + L, 1 + L]; position 1 is padding
    assert mask[0].tolist() == [True, False, True, True]  # [USER] sees every real item
    assert mask[3].tolist() == [False, False, True, True]  # items: causal, never [USER] or padding
    assert mask[2].tolist() == [False, False, True, False]
    assert mask[1].tolist() == [False, True, False, False]  # a pad query sees only itself (no NaN)


def test_item_tags_drop_rare_and_empty():
    tags, vocab = item_tags(["Acme", "acme ", "", "Solo"], [["Pens"], ["pens"], ["pens"], []], min_count=2)
    assert vocab == ["brand:acme", "cat:pens"]
    assert tags == [[0, 1], [0, 1], [1], []]


def test_stars_needs_embeddings():
    with pytest.raises(ValueError, match="needs the item text embeddings"):
        STARSRecommender(STARSConfig(), CandidateRule()).fit(fake_dataset(), successor_task(10, 1), None)


def test_queries_type_is_hashable_and_has_no_target():
    q = Query(0, "u", "D", ("D:1",))
    assert not hasattr(q, "target") and hash(q)


def test_stars_time_budget_stops_early():
    """Issue #11 item 13: the STARS epoch count can be capped by wall-clock time."""
    rec = STARSRecommender(STARSConfig(**{**FAST, "epochs": 4, "time_budget_minutes": 1e-9}), CandidateRule())
    rec.fit(fake_dataset(), successor_task(100, seed=1), text_embeddings(24))
    assert len(rec.train_log["epoch_losses"]) == 1 and rec.train_log["stopped_by_time_budget"] is True
