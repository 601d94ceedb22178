"""SASRec: learns a deterministic next-item task, is causal, deterministic per seed; semantic init keeps geometry."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from eval.metrics import hit_rate, pessimistic_rank, target_ranks
from eval.recommenders import CandidateRule, Query
from eval.models.sasrec import SASRec, SASRecConfig, SASRecRecommender, apply_rope, rope_tables, semantic_init
from eval.models.training import encode_histories, shifted_examples

N_ITEMS = 24


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a shared CPU makes extra OpenMP threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def successor_task(n_rows: int, seed: int, n_items: int = N_ITEMS, domains: tuple[str, ...] = ("D",)):
    """Rows whose next item is a fixed permutation of the last item (deterministic), in every domain."""
    perm = np.random.default_rng(123).permutation(n_items)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_rows):
        domain = domains[i % len(domains)]
        seq = [int(rng.integers(n_items))]
        for _ in range(int(rng.integers(1, 8))):
            seq.append(int(perm[seq[-1]]))
        ids = [f"{domain}:{j}" for j in seq]
        rows.append({"user_id": f"u{i}", "domain": domain, "history": ids[:-1], "target": ids[-1]})
    return rows


def fake_dataset(domains: tuple[str, ...] = ("D",), n_items: int = N_ITEMS):
    ids = [f"{d}:{j}" for d in domains for j in range(n_items)]
    return types.SimpleNamespace(items={
        "item_id": ids, "domain": [i.split(":")[0] for i in ids],
        "brand": [f"brand{j % 4}" for j in range(len(ids))], "categories": [[] for _ in ids]})


def queries_of(rows):
    return [Query(i, r["user_id"], r["domain"], tuple(r["history"])) for i, r in enumerate(rows)]


def hr_at_1(rec, rows) -> float:
    lists = rec.recommend(queries_of(rows), 5)
    return float(hit_rate(target_ranks(lists, [r["target"] for r in rows]), 1).mean())


FAST = dict(dim=32, heads=2, dropout=0.0, epochs=6, batch_size=32, lr=5.0e-3)


@pytest.mark.parametrize("variant", [
    {},
    {"positions": "rope", "norm": "rmsnorm", "mlp": "silu_gated", "init": "semantic", "freeze_item_epochs": 1},
    {"loss": "sampled", "num_negatives": 8, "epochs": 15},  # fewer negatives: a weaker signal per step
])
def test_sasrec_learns_deterministic_successor(variant):
    train, test = successor_task(400, seed=1), successor_task(200, seed=2)
    text = np.random.default_rng(0).normal(size=(N_ITEMS, 16)).astype(np.float32)
    rec = SASRecRecommender(SASRecConfig(**{**FAST, **variant}), CandidateRule())
    rec.fit(fake_dataset(), train, text)
    assert hr_at_1(rec, test) > 0.9
    assert rec.train_log["epoch_losses"][-1] < rec.train_log["epoch_losses"][0]


def test_same_seed_same_recommendations_and_domain_rule():
    domains = ("A", "B")
    train, test = successor_task(200, 1, domains=domains), successor_task(50, 2, domains=domains)
    cfg = SASRecConfig(**{**FAST, "epochs": 2})
    lists = []
    for _ in range(2):
        rec = SASRecRecommender(cfg, CandidateRule(exclude_history=True))
        rec.fit(fake_dataset(domains), train, None)
        lists.append(rec.recommend(queries_of(test), 10))
    assert lists[0] == lists[1]
    for row, items in zip(test, lists[0]):
        assert all(i.startswith(row["domain"] + ":") for i in items)  # same domain only
        assert not set(items) & set(row["history"])  # history excluded


def test_list_ranks_equal_pessimistic_score_ranks():
    """The fast path (top-k lists, seeded tie order) agrees with ranking the target inside the full score vector."""
    domains = ("A", "B")
    train, test = successor_task(200, 1, domains=domains), successor_task(60, 2, domains=domains)
    rec = SASRecRecommender(SASRecConfig(**{**FAST, "epochs": 1}), CandidateRule())
    rec.fit(fake_dataset(domains), train, None)
    queries = queries_of(test)
    ranks = target_ranks(rec.recommend(queries, 2 * N_ITEMS), [r["target"] for r in test])
    with torch.inference_mode():
        tokens = encode_histories([q.history for q in queries], rec.catalogue.index, 10)
        scores = (rec.model(tokens)[:, -1] @ rec.model.item_matrix()[1:].T).double().numpy()
    scores[~rec.catalogue.candidate_mask(queries, CandidateRule())] = -np.inf
    expected = [pessimistic_rank(s, rec.catalogue.index[r["target"]]) for s, r in zip(scores, test)]
    assert ranks.tolist() == expected


def test_model_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(dim=16, heads=2, dropout=0.0, max_len=5), n_items=10).eval()
    a = torch.tensor([[0, 0, 3, 4, 5]])
    b = torch.tensor([[0, 0, 3, 4, 9]])  # differs only at the last position
    ha, hb = model(a), model(b)
    torch.testing.assert_close(ha[:, :4], hb[:, :4])  # earlier positions cannot see the future
    # More left padding does not change the newest state (learned positions are anchored at the right).
    longer = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    model8 = SASRec(SASRecConfig(dim=16, heads=2, dropout=0.0, max_len=8), n_items=10).eval()
    model8.load_state_dict(model.state_dict() | {"pos.weight": torch.cat([torch.randn(3, 16), model.pos.weight])})
    torch.testing.assert_close(model8(longer)[:, -1], ha[:, -1])


def test_rope_scores_depend_on_relative_position_only():
    cos, sin = rope_tables(12, 8)
    q, k = torch.randn(8), torch.randn(8)

    def score(i: int, j: int) -> torch.Tensor:
        x = torch.zeros(1, 1, 12, 8)
        y = torch.zeros(1, 1, 12, 8)
        x[0, 0, i], y[0, 0, j] = q, k
        return (apply_rope(x, cos, sin)[0, 0, i] * apply_rope(y, cos, sin)[0, 0, j]).sum()

    torch.testing.assert_close(score(5, 2), score(9, 6))


def test_semantic_init_preserves_neighbours_and_scale():
    text = np.random.default_rng(0).normal(size=(200, 32)).astype(np.float32)
    text[1] = text[0] + 0.01  # a near-duplicate item
    init = semantic_init(text, 16, seed=0)
    assert init.shape == (200, 16) and init.dtype == np.float32
    assert init.std() == pytest.approx(16 ** -0.5, rel=1e-3)
    dist = np.linalg.norm(init - init[0], axis=1)
    assert np.argsort(dist)[1] == 1  # the near-duplicate stays the nearest neighbour


def test_shifted_examples_labels():
    index = {"a": 0, "b": 1, "c": 2}
    inputs, labels = shifted_examples([{"history": ["a", "b"], "target": "c"}], index, max_len=4)
    assert inputs.tolist() == [[0, 0, 1, 2]]  # tokens are rows + 1; 0 = padding
    assert labels.tolist() == [[0, 0, 2, 3]]  # no loss where the input is padding
    assert encode_histories([["a", "zzz", "c"]], index, 2).tolist() == [[1, 3]]  # unknown ids dropped


def test_time_budget_stops_after_the_epoch_that_passes_it():
    """Issue #11 item 13: on a large dataset the epoch count of the small one can be capped by wall-clock time."""
    train = successor_task(200, seed=1)
    rec = SASRecRecommender(SASRecConfig(**{**FAST, "epochs": 5, "time_budget_minutes": 1e-9}), CandidateRule())
    rec.fit(fake_dataset(), train, None)
    assert len(rec.train_log["epoch_losses"]) == 1 and rec.train_log["stopped_by_time_budget"] is True
    assert rec.train_log["epoch_seconds"] > 0
    full = SASRecRecommender(SASRecConfig(**{**FAST, "epochs": 2, "time_budget_minutes": 60}), CandidateRule())
    full.fit(fake_dataset(), train, None)
    assert len(full.train_log["epoch_losses"]) == 2 and "stopped_by_time_budget" not in full.train_log

