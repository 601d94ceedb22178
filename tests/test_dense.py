"""Dense retrieval (eval/dense): the morph maths, InfoNCE, faiss vs exact top-k, BM25, training, bad input, and
every dense method through the eval CLI on a tiny dataset."""

from __future__ import annotations

import json
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from test_eval import REPO, TINY_CONFIG, write_tiny

from eval import run
from eval.dense.bm25 import BM25, tokenize
from eval.dense.index import IndexConfig, ItemIndex, build_index, search
from eval.dense.item_text import item_texts
from eval.dense.losses import info_nce
from eval.dense.morph import explicit_low_rank_morph, full_rank_morph, low_rank_morph
from eval.dense.recommenders import (BM25Recommender, DenseConfig, DenseRecommender, RandomRecommender,
                                     default_vectors)
from eval.dense.towers import MorphTower, TowerConfig, seed_query
from eval.dense.training import DenseTrainConfig
from eval.metrics import hit_rate, target_ranks
from data_builders.cli import UserError
from eval.recommenders import CandidateRule, Catalogue, Query


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path / "cache"))  # title embeddings are cached here


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_dataset(n_items: int, domains=("A", "B"), titles=None):
    """What the dense methods read of a dataset: ``items`` (a datasets table) and ``item_ids``."""
    import datasets

    ids = [f"{d}:{j}" for d in domains for j in range(n_items)]
    items = datasets.Dataset.from_dict({"item_id": ids, "domain": [i.split(":")[0] for i in ids],
                                        "title": titles or [f"item {i}" for i in ids], "brand": ["Acme"] * len(ids)})
    return types.SimpleNamespace(item_ids=ids, items=items)


# --- morph operators ---------------------------------------------------------------------------------------------

def test_zero_A_and_B_give_the_identity():
    """A_u = B_u = 0 ⇒ P_u = I ⇒ q = v_seed; an untrained tower (B starts at 0) returns normalise(v_seed)."""
    v = torch.randn(5, 12)
    zeros = torch.zeros(5, 12, 4)
    assert torch.equal(low_rank_morph(v, zeros, zeros), v)
    assert torch.equal(full_rank_morph(v, torch.zeros(5, 12, 12)), v)
    hist, lengths = torch.randn(5, 3, 12), torch.tensor([3, 1, 2, 3, 2])
    for cfg in (TowerConfig(dim=12, rank=4, hidden=8), TowerConfig(dim=12, morph="full_rank", adapter="mean",
                                                                     hidden=8, seed_vector="mean")):
        q = MorphTower(cfg)(hist, lengths)
        assert torch.allclose(q, seed_query(hist, lengths, cfg.seed_vector), atol=1e-6)


def test_low_rank_path_equals_the_explicit_matrix():
    """v + A (Bᵀ v) == (I + A Bᵀ) v on random inputs, for every row of a batch."""
    g = torch.Generator().manual_seed(0)
    v, A, B = torch.randn(7, 16, generator=g), torch.randn(7, 16, 5, generator=g), torch.randn(7, 16, 5, generator=g)
    expected = torch.stack([(torch.eye(16) + A[i] @ B[i].T) @ v[i] for i in range(7)])
    assert torch.allclose(low_rank_morph(v, A, B), expected, atol=1e-4)
    assert torch.allclose(explicit_low_rank_morph(v, A, B), expected, atol=1e-4)
    M = torch.randn(7, 16, 16, generator=g)
    assert torch.allclose(full_rank_morph(v, M), torch.stack([(torch.eye(16) + M[i]) @ v[i] for i in range(7)]),
                          atol=1e-4)


def test_tower_shapes_and_parameter_counts():
    mini = MorphTower(TowerConfig(dim=384, rank=32, hidden=256))
    full = MorphTower(TowerConfig(dim=384, morph="full_rank", adapter="mean", hidden=256))
    assert mini.params_per_user == 2 * 384 * 32 == 24_576 and full.params_per_user == 384 ** 2 == 147_456
    q = mini(torch.randn(3, 10, 384), torch.tensor([10, 4, 1]))
    assert q.shape == (3, 384) and torch.allclose(q.norm(dim=1), torch.ones(3))


def test_lstm_state_ignores_padding():
    """Right padding is packed away: the same history gives the same query in any batch width."""
    tower = MorphTower(TowerConfig(dim=8, rank=2, hidden=6))
    torch.nn.init.normal_(tower.hypernet.to_b.weight)  # make the morph non-trivial
    hist = torch.randn(1, 3, 8)
    padded = torch.cat([hist, torch.randn(1, 4, 8)], dim=1)  # junk after the real items
    assert torch.allclose(tower(hist, torch.tensor([3])), tower(padded, torch.tensor([3])), atol=1e-6)


# --- loss ----------------------------------------------------------------------------------------------------------

def test_info_nce_matches_a_hand_computed_2x2_batch():
    """q = [[1, 0], [.6, .8]], v = [[.8, .6], [0, 1]], τ = 0.5: logits = [[1.6, 0], [1.92, 1.6]].

    L = ½ [ −log(e^1.6 / (e^1.6 + e^0)) − log(e^1.6 / (e^1.92 + e^1.6)) ] = ½ [log(1 + e^−1.6) + log(1 + e^0.32)].
    """
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    v = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    expected = 0.5 * (math.log(1 + math.exp(-1.6)) + math.log(1 + math.exp(0.32)))
    assert info_nce(q, v, tau=0.5).item() == pytest.approx(expected, abs=1e-6)
    # The same item as both rows' positive is no negative for either: each row is then its own softmax of one.
    assert info_nce(q, v, tau=0.5, item_ids=torch.tensor([7, 7])).item() == pytest.approx(0.0, abs=1e-6)
    assert info_nce(q, v, tau=0.5, item_ids=torch.tensor([7, 8])).item() == pytest.approx(expected, abs=1e-6)


# --- faiss ---------------------------------------------------------------------------------------------------------

def test_faiss_top_k_equals_torch_topk_over_exact_scores():
    rng = np.random.default_rng(0)
    items, queries = unit(rng, 500, 32), unit(rng, 20, 32)
    _, rows = search(build_index(items, IndexConfig()), queries, 10)
    expected = torch.topk(torch.from_numpy(queries @ items.T), 10, dim=1).indices.numpy()
    assert np.array_equal(rows, expected)
    # IVF scanning every list is exhaustive too; HNSW on 500 points with a wide search finds the same top 10.
    ivf = build_index(items, IndexConfig(kind="ivf", ivf_nlist=8, ivf_nprobe=8))
    assert ivf.nlist == 8 and np.array_equal(search(ivf, queries, 10)[1], expected)
    hnsw = build_index(items, IndexConfig(kind="hnsw", hnsw_m=16, hnsw_ef_search=200))
    assert np.mean([len(set(a) & set(b)) for a, b in zip(search(hnsw, queries, 10)[1], expected)]) >= 9.5


def test_item_index_searches_the_rule_candidates_only():
    """Per-domain indexes == exact scores masked to the row's domain (minus history when excluded)."""
    rng = np.random.default_rng(1)
    ds = fake_dataset(40)
    cat = Catalogue(ds.item_ids, ds.items["domain"])
    items, q = unit(rng, 80, 16), unit(rng, 6, 16)
    queries = [Query(b, "u", "AB"[b % 2], (f"{'AB'[b % 2]}:{b}",)) for b in range(6)]
    for rule in (CandidateRule(), CandidateRule(exclude_history=True), CandidateRule(same_domain=False)):
        got = ItemIndex(items, cat, rule, IndexConfig()).search(queries, q, 5)
        scores = q @ items.T
        scores[~cat.candidate_mask(queries, rule)] = -np.inf
        want = [[ds.item_ids[i] for i in row] for row in np.argsort(-scores, axis=1)[:, :5]]
        assert got == want


def test_equal_scores_follow_the_catalogue_tie_order():
    """Identical item vectors tie; the order is the catalogue's tie order, also beyond the first fetch."""
    ds = fake_dataset(30, domains=("A",))
    cat = Catalogue(ds.item_ids, ds.items["domain"], tie_seed=3)
    items = np.ones((30, 4), dtype=np.float32) / 2
    got = ItemIndex(items, cat, CandidateRule(), IndexConfig()).search([Query(0, "u", "A", ())],
                                                                       items[:1], 25)[0]
    assert got == [ds.item_ids[i] for i in cat.tie_order[:25]]


# --- BM25 ----------------------------------------------------------------------------------------------------------

def bm25_reference(docs: list[str], query: str, k1: float, b: float) -> np.ndarray:
    """Term-at-a-time textbook BM25 in plain python."""
    toks = [tokenize(d) for d in docs]
    avgdl = sum(map(len, toks)) / len(toks)
    out = np.zeros(len(docs))
    for t in tokenize(query):
        df = sum(t in d for d in toks)
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        for i, d in enumerate(toks):
            tf = d.count(t)
            out[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_bm25_matches_the_textbook_formula_with_concatenated_history():
    docs = ["Red stapler, heavy duty stapler", "Blue pen", "Stapler refill staples", "Desk lamp LED", ""]
    bm = BM25(docs, k1=1.2, b=0.75)
    from scipy import sparse

    history = sparse.csr_matrix(np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0]], dtype=float))  # rows 0+2; row 1
    got = bm.scores(history)
    assert np.allclose(got[0], bm25_reference(docs, docs[0] + " " + docs[2], 1.2, 0.75))
    assert np.allclose(got[1], bm25_reference(docs, docs[1], 1.2, 0.75))
    assert got[0, 4] == 0.0  # no text, no score


# --- training ------------------------------------------------------------------------------------------------------

def successor_rows(n_items: int, n_rows: int, seed: int):
    """Next item = a fixed permutation of the newest item: history text similarity alone cannot find it."""
    perm = np.random.default_rng(99).permutation(n_items)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_rows):
        seq = [int(rng.integers(n_items))]
        for _ in range(int(rng.integers(1, 6))):
            seq.append(int(perm[seq[-1]]))
        rows.append({"user_id": f"u{i}", "domain": "A", "history": [f"A:{j}" for j in seq[:-1]],
                     "target": f"A:{seq[-1]}"})
    return rows


def recall_at(rec, rows, k: int) -> float:
    queries = [Query(i, r["user_id"], r["domain"], tuple(r["history"])) for i, r in enumerate(rows)]
    return float(hit_rate(target_ranks(rec.recommend(queries, k), [r["target"] for r in rows]), k).mean())


def test_training_improves_recall_at_10_on_a_tiny_task():
    n_items = 100
    ds = fake_dataset(n_items, domains=("A",))
    emb = unit(np.random.default_rng(0), n_items, 16)
    train, test = successor_rows(n_items, 1500, seed=1), successor_rows(n_items, 200, seed=2)
    tower = TowerConfig(rank=8, hidden=64)

    def fitted(epochs: int) -> DenseRecommender:
        cfg = DenseConfig(tower=tower, train=DenseTrainConfig(epochs=epochs, batch_size=64, lr=3.0e-3, tau=0.1))
        rec = DenseRecommender(cfg, CandidateRule(), name="mini_xpert")
        rec.fit(ds, train, emb)
        return rec

    # untrained, the tower is the identity morph of v_seed = the newest item: the bi-encoder with that query
    untrained = DenseRecommender(DenseConfig(query="last"), CandidateRule(), name="bi_encoder")
    untrained.fit(ds, train, emb)
    trained = fitted(12)
    before, after = recall_at(untrained, test, 10), recall_at(trained, test, 10)
    assert before < 0.3 and after > before + 0.4, (before, after)
    log = trained.train_log
    assert log["epoch_losses"][-1] < log["epoch_losses"][0] and log["params_per_user"] == 2 * 16 * 8
    assert log["peak_rss_mb"] > 0 and log["steps"] == 12 * math.ceil(1500 / 64)


# --- bad input -----------------------------------------------------------------------------------------------------

def fitted_bi_encoder(**cfg):
    ds = fake_dataset(10)
    emb = unit(np.random.default_rng(0), 20, 8)
    rec = DenseRecommender(DenseConfig(**cfg), CandidateRule(), name="bi_encoder")
    rec.fit(ds, [{"user_id": "u", "domain": "A", "history": ["A:1"], "target": "A:2"}] * 3, emb)
    return rec, ds, emb


def test_unknown_history_items_are_an_error_for_every_method():
    rec, ds, emb = fitted_bi_encoder()
    bad = [Query(4, "u7", "A", ("A:1", "A:99"))]
    others = [RandomRecommender(CandidateRule()), BM25Recommender(CandidateRule())]
    for other in others:
        other.fit(ds, [], emb)
    for r in [rec, *others]:
        with pytest.raises(ValueError, match=r"row 4 \(user 'u7'.*\['A:99'\] are not in the catalogue"):
            r.recommend(bad, 3)


def test_empty_history_queries_the_domain_default_vector():
    rec, ds, emb = fitted_bi_encoder()
    q = rec.query_vectors([Query(0, "u", "B", ())])[0]
    # Domain B had no training targets: every item weighs 1, the default is its normalised mean vector.
    mean_b = emb[10:].mean(0)
    assert np.allclose(q, mean_b / np.linalg.norm(mean_b), atol=1e-6)
    # Domain A had 3 training targets on item A:2: weights 4 for it, 1 for the other items.
    weighted = emb[:10].sum(0) + 3 * emb[2]
    assert np.allclose(rec.defaults[0].numpy(), weighted / np.linalg.norm(weighted), atol=1e-6)
    assert np.allclose(default_vectors(emb, np.repeat([0, 1], 10), np.zeros(20))[1], q, atol=1e-6)
    lists = rec.recommend([Query(0, "u", "B", ()), Query(1, "u", "A", ())], 4)
    assert all(len(items) == 4 for items in lists) and all(i.startswith("B:") for i in lists[0])


def test_embedding_dimension_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"model's d = 384 \(dense_dim\) but the item embeddings have d = 8"):
        fitted_bi_encoder(dim=384)
    rec, _, _ = fitted_bi_encoder()
    with pytest.raises(ValueError, match="query vectors of shape"):
        rec.index.search([Query(0, "u", "A", ())], np.zeros((1, 5), np.float32), 3)
    with pytest.raises(ValueError, match=r"embedding dimension 8 does not match the model's d = 384"):
        MorphTower(TowerConfig(dim=384))(torch.randn(2, 3, 8), torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="embeddings of shape"):
        DenseRecommender(DenseConfig(), CandidateRule(), "x").fit(fake_dataset(10), [], np.zeros((7, 8), np.float32))


def test_items_without_title_fall_back_to_their_metadata():
    items = [{"title": "Red Stapler", "brand": "Acme"}, {"title": "", "brand": "Acme", "description": "ink"},
             {"title": None}]
    assert item_texts(items, "title") == ["Red Stapler", "Brand: Acme; Description: ink;", ""]
    assert item_texts(items, "meta")[0] == "Title: Red Stapler; Brand: Acme;"


def test_random_is_reproducible_per_row_in_any_batch():
    ds = fake_dataset(30)
    rec = RandomRecommender(CandidateRule(), seed=5)
    rec.fit(ds, [], None)
    queries = [Query(i, "u", "AB"[i % 2], ("A:1",)) for i in range(6)]
    together = rec.recommend(queries, 10)
    assert together == [rec.recommend([q], 10)[0] for q in queries]
    assert all(item.startswith(q.domain) for q, items in zip(queries, together) for item in items)


# --- encoder fine-tuning -------------------------------------------------------------------------------------------

def tiny_bert(path):
    """A 3-layer, 32-wide BERT with MiniLM's tokenizer files (no download)."""
    import shutil

    from transformers import BertConfig, BertModel

    from data_builders.embeddings import resolve_encoder_path

    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(path)
    src = resolve_encoder_path("embedded:all-minilm-l6-v2")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, path / name)
    return path


def test_finetuning_trains_only_the_last_layers(tmp_path):
    ds = fake_dataset(12, domains=("A",), titles=[f"{c} stapler {j}" for j, c in enumerate("rgbcmykwrgbc")])
    rows = successor_rows(12, 64, seed=3)
    cfg = DenseConfig(tower=TowerConfig(rank=2, hidden=8), encoder=str(tiny_bert(tmp_path / "bert")),
                      finetune_encoder_layers=2, item_max_tokens=16, text="title",
                      train=DenseTrainConfig(epochs=1, batch_size=16, lr=1.0e-2))
    rec = DenseRecommender(cfg, CandidateRule(), name="mini_xpert")
    from transformers import BertModel

    before = BertModel.from_pretrained(cfg.encoder).state_dict()
    captured = {}
    real = rec._finetune_encoder
    rec._finetune_encoder = lambda dataset: captured.setdefault("enc", real(dataset))
    rec.fit(ds, rows, None)
    after = captured["enc"].model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("encoder.layer.1.", "encoder.layer.2.")) for k in changed)
    assert any(k.startswith("encoder.layer.1.") for k in changed) and any(k.startswith("encoder.layer.2.")
                                                                            for k in changed)
    assert np.allclose(rec.item_vectors.numpy(), captured["enc"].encode_all(), atol=1e-6)  # re-encoded catalogue
    assert rec.item_vectors.shape == (12, 32) and len(rec.recommend([Query(0, "u", "A", ("A:1",))], 5)[0]) == 5


# --- the eval CLI --------------------------------------------------------------------------------------------------

DENSE = ["random", "bm25", "bi_encoder", "bi_encoder_title", "xpert", "mini_xpert"]
SMALL = ["--dense_epochs", "2", "--dense_xpert_epochs", "2", "--dense_rank", "4", "--dense_hidden", "16",
         "--dense_xpert_hidden", "8", "--dense_batch_size", "16", "--ks", "1", "3", "5", "10", "20"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny_dense"))


def test_every_dense_method_runs_through_the_eval_cli(tiny, tmp_path):
    dataset, embeddings = tiny
    metrics = run.run_eval(["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(embeddings),
                        "--output_dir", str(tmp_path), "--methods", "popularity", *DENSE, *SMALL])
    assert metrics["method_order"] == ["popularity", *DENSE]
    for name in DENSE:
        m = metrics["methods"][name]
        assert m["all"]["rows"] == 40 and m["all"]["invalid_rate"] == 0.0
        assert 0 <= m["all"]["hr@1"] <= m["all"]["hr@10"] <= 1 and metrics["latency_ms"][name]["n"] == 5
    params = {name: metrics["training"][name]["params_per_user"] for name in DENSE}
    assert params == {"random": 0, "bm25": 0, "bi_encoder": 0, "bi_encoder_title": 0, "xpert": 16 * 16,
                      "mini_xpert": 2 * 16 * 4}
    assert len(metrics["training"]["mini_xpert"]["epoch_losses"]) == 2
    report = (tmp_path / "report.md").read_text()
    assert "| params/user |" in report and "latency ms/user (mean / p50 / p95)" in report
    assert "## Recall@10 / @20 and NDCG@10 per domain" in report
    # training table: method | train s | examples | epochs | final loss | peak RSS MB | params/user | notes
    assert re.search(r"\| mini_xpert \| [\d.]+ \| \d+ \| 2 \| [\d.]+ \| [\d.]+ \| 128 \|", report)
    assert re.search(r"\| random \| [\d.]+ \| – \| – \| – \| – \| 0 \|", report)


def test_dense_methods_respect_exclude_history(tiny, tmp_path):
    dataset, embeddings = tiny
    from data_builders.dataset import load_rec_dataset
    from eval.evaluate import EvalRows

    ds = load_rec_dataset(dataset)
    rows = EvalRows.from_split(ds.splits["test"])
    a = run.EvalArgs(**{**run.EvalArgs().__dict__, "dense_epochs": 1, "dense_rank": 4, "dense_hidden": 8,
                        "dense_batch_size": 16})
    rule = CandidateRule(exclude_history=True)
    emb = np.load(embeddings / "embeddings.npy")
    train = ds.splits["train"].to_list()
    for method in ("bm25", "bi_encoder", "mini_xpert", "random"):
        (rec,) = run.METHODS[method](a, rule)
        rec.fit(ds, train, emb)
        for q, items in zip(rows.queries, rec.recommend(rows.queries, 10)):
            assert len(items) == 10 and not set(items) & set(q.history) and all(i.startswith(q.domain) for i in items)


def test_sweep_builds_one_recommender_per_value():
    a = run.EvalArgs(**{**run.EvalArgs().__dict__, "dense_sweep": "rank", "dense_sweep_values": ["8", "64"]})
    recs = run.METHODS["mini_xpert_sweep"](a, CandidateRule())
    assert [r.name for r in recs] == ["mini_xpert[rank=8]", "mini_xpert[rank=64]"]
    assert [r.cfg.tower.rank for r in recs] == [8, 64]
    with pytest.raises(ValueError, match="dense_sweep"):
        run.METHODS["mini_xpert_sweep"](run.EvalArgs(), CandidateRule())


def test_included_metrics_must_cover_the_same_rows(tiny, tmp_path):
    dataset, embeddings = tiny
    base = ["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(embeddings)]
    run.run_eval([*base, "--output_dir", str(tmp_path / "dense"), "--methods", "popularity", "bi_encoder", "random"])
    merged = run.run_eval([*base, "--output_dir", str(tmp_path / "m"), "--methods", "popularity",
                       "--include_metrics", str(tmp_path / "dense" / "metrics.json"), "--include_methods", "bi_encoder"])
    assert merged["method_order"] == ["popularity", "bi_encoder"]
    assert "| bi_encoder |" in (tmp_path / "m" / "report.md").read_text()
    with pytest.raises(ValueError, match=r"has no methods \['mini_xpert'\]"):
        run.run_eval([*base, "--output_dir", str(tmp_path / "x"), "--methods", "popularity",
                  "--include_metrics", str(tmp_path / "dense" / "metrics.json"), "--include_methods", "mini_xpert"])
    with pytest.raises(ValueError, match="only metrics of the same rows can share a table"):
        run.run_eval([*base, "--output_dir", str(tmp_path / "y"), "--methods", "popularity", "--max_rows", "10",
                  "--include_metrics", str(tmp_path / "dense" / "metrics.json")])


def test_included_methods_may_come_from_several_runs(tiny, tmp_path):
    """`make demo` merges the SFT run (generative, hybrid) and the baselines' run into the RL run's report."""
    dataset, embeddings = tiny
    base = ["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(embeddings)]
    run.run_eval([*base, "--output_dir", str(tmp_path / "a"), "--methods", "bi_encoder", "popularity"])
    run.run_eval([*base, "--output_dir", str(tmp_path / "b"), "--methods", "random"])
    files = [str(tmp_path / "a" / "metrics.json"), str(tmp_path / "b" / "metrics.json")]
    merged = run.run_eval([*base, "--output_dir", str(tmp_path / "m"), "--methods", "popularity",
                           "--include_metrics", *files, "--include_methods", "random", "bi_encoder"])
    assert merged["method_order"] == ["popularity", "bi_encoder", "random"]
    assert merged["methods"]["random"] == json.loads(Path(files[1]).read_text())["methods"]["random"]
    with pytest.raises(ValueError, match=r"has no methods \['mini_xpert'\]"):
        run.run_eval([*base, "--output_dir", str(tmp_path / "x"), "--methods", "popularity",
                      "--include_metrics", *files, "--include_methods", "random", "mini_xpert"])


# --- the seed vector is a setting of both morph models (#11 item 16) -----------------------------------------------

@pytest.mark.parametrize("method", ["xpert", "mini_xpert"])
def test_seed_vector_setting_is_honoured_by_both_morph_models(method):
    """The config's seed vector reaches the tower of XPERT and Mini_XPERT; newest item vs history mean give
    different query vectors (an untrained tower returns normalise(v_seed) exactly)."""
    key = {"xpert": "dense_xpert_seed_vector", "mini_xpert": "dense_seed_vector"}[method]
    ds = fake_dataset(10)
    emb = unit(np.random.default_rng(0), 20, 8)
    train = [{"user_id": "u", "domain": "A", "history": ["A:1", "A:4"], "target": "A:2"}] * 8
    queries = [Query(0, "u", "A", ("A:1", "A:3", "A:7")), Query(1, "v", "B", ("B:2", "B:5"))]
    hist = torch.from_numpy(emb[[[1, 3, 7], [12, 15, 15]]])
    lengths = torch.tensor([3, 2])
    vectors = {}
    for seed_vector in ("last", "mean"):
        a = run.EvalArgs(**{**run.EvalArgs().__dict__, key: seed_vector, "dense_epochs": 1, "dense_xpert_epochs": 1,
                            "dense_rank": 2, "dense_hidden": 4, "dense_xpert_hidden": 4, "dense_batch_size": 4})
        (rec,) = run.METHODS[method](a, CandidateRule())
        assert rec.cfg.tower.seed_vector == seed_vector
        rec.fit(ds, train, emb)
        assert rec.tower.cfg.seed_vector == seed_vector
        with torch.no_grad():
            for p in rec.tower.hypernet.parameters():
                p.zero_()  # the morph becomes the identity: q = normalise(v_seed)
        vectors[seed_vector] = rec.query_vectors(queries)
        np.testing.assert_allclose(vectors[seed_vector], seed_query(hist, lengths, seed_vector).numpy(), atol=1e-6)
    assert not np.allclose(vectors["last"], vectors["mean"], atol=1e-3)


# --- bad settings of the dense methods: user errors naming the key, before anything is trained (#11) -------------

BAD_DENSE_SETTINGS = [
    ("rank_zero", lambda: TowerConfig(rank=0), r"dense tower: `rank` must be in \[1, inf\], got 0"),
    ("rank_above_d", lambda: TowerConfig(dim=16, rank=32), r"`rank` r=32 must be at most the item vectors' d=16"),
    ("hidden_zero", lambda: TowerConfig(hidden=0), r"`hidden` must be in \[1"),
    ("seed_vector", lambda: TowerConfig(seed_vector="first"), r"`seed_vector`: 'first' is not one of 'last', 'mean'"),
    ("pooling", lambda: TowerConfig(adapter="gru"), r"`adapter`: 'gru' is not one of 'lstm', 'mean'"),
    ("morph", lambda: TowerConfig(morph="diagonal"), r"`morph`: 'diagonal' is not one of"),
    ("lr_negative", lambda: DenseTrainConfig(lr=-1e-3), r"dense training: `lr`: must be a finite number > 0, got -0.001"),
    ("lr_nan", lambda: DenseTrainConfig(lr=float("nan")), r"`lr`: must be a finite number > 0, got nan"),
    ("tau_zero", lambda: DenseTrainConfig(tau=0.0), r"`tau`: must be a finite number > 0"),
    ("epochs_zero", lambda: DenseTrainConfig(epochs=0), r"dense training: `epochs` must be in \[1, inf\], got 0"),
    ("batch_one", lambda: DenseTrainConfig(batch_size=1), r"`batch_size` must be in \[2"),
    ("negatives", lambda: DenseTrainConfig(negatives="hard"), r"`negatives`: 'hard' is not one of"),
    ("seed", lambda: DenseTrainConfig(seed=-1), r"`seed` must be in \[0"),
    ("index_kind", lambda: IndexConfig(kind="flat"), r"dense index: `kind`: 'flat' is not one of"),
    ("nprobe_zero", lambda: IndexConfig(ivf_nprobe=0), r"`ivf_nprobe` must be in \[1"),
    ("query", lambda: DenseConfig(query="max"), r"dense config: `query`: 'max' is not one of 'last', 'mean'"),
    ("text", lambda: DenseConfig(text="reviews"), r"`text`: 'reviews' is not one of 'meta', 'title'"),
    ("history_len", lambda: DenseConfig(history_len=0), r"`history_len` must be in \[1"),
    ("rank_above_dim", lambda: DenseConfig(dim=8, tower=TowerConfig(rank=32)), r"`rank` r=32 .* model's d=8"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in BAD_DENSE_SETTINGS], ids=[c[0] for c in BAD_DENSE_SETTINGS])
def test_bad_dense_settings_are_user_errors_naming_the_key(make, message):
    with pytest.raises(UserError, match=message):
        make()


def test_rank_above_the_embedding_dimension_stops_before_training():
    rec = DenseRecommender(DenseConfig(tower=TowerConfig(rank=32, hidden=4)), CandidateRule(), name="mini_xpert")
    with pytest.raises(UserError, match=r"`rank` r=32 must be at most the item vectors' d=8"):
        rec.fit(fake_dataset(10), [{"user_id": "u", "domain": "A", "history": ["A:1"], "target": "A:2"}] * 4,
                unit(np.random.default_rng(0), 20, 8))
    assert rec.tower is None and "epoch_losses" not in rec.train_log


BAD_DENSE_CLI = [
    ("seed_vector", ["--dense_seed_vector", "first"], "error: `dense_seed_vector`: 'first' is not one of"),
    ("xpert_seed_vector", ["--dense_xpert_seed_vector", "x"], "error: `dense_xpert_seed_vector`: 'x' is not one of"),
    ("pooling", ["--dense_pooling", "gru"], "error: `dense_pooling`: 'gru' is not one of"),
    ("negatives", ["--dense_negatives", "hard"], "error: `dense_negatives`: 'hard' is not one of"),
    ("index", ["--dense_index", "flat"], "error: `dense_index`: 'flat' is not one of"),
    ("nprobe", ["--dense_ivf_nprobe", "0"], "error: dense index: `ivf_nprobe` must be in [1, inf], got 0"),
    ("rank_above_d", ["--dense_rank", "17"], "error: dense_rank: r = 17 is larger than the item embeddings' d = 16"),
    ("dim", ["--dense_dim", "12", "--dense_rank", "4"], "error: dense_dim: 12, but the item embeddings have d = 16"),
]


@pytest.mark.parametrize("extra, message", [c[1:] for c in BAD_DENSE_CLI], ids=[c[0] for c in BAD_DENSE_CLI])
def test_bad_dense_settings_stop_the_cli_before_any_method_fits(tiny, tmp_path, capsys, extra, message):
    dataset, embeddings = tiny
    out = tmp_path / "eval"
    rc = run.main(["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(embeddings),
                   "--output_dir", str(out), "--methods", "popularity", "xpert", "mini_xpert", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not out.exists()  # popularity did not run first: nothing (not even metrics.partial.json) written


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "eval").glob("*dense*.yaml")), ids=lambda p: p.stem)
def test_dense_configs_parse_as_the_cli_parses_them(config):
    """The CLI's strict parser (types of every value, e.g. dense_sweep_values is a list of strings), not TrlParser."""
    from data_builders.cli import parse_config

    (args,) = parse_config((run.EvalArgs,), ["--config", str(config)])
    run.check_args(args)
