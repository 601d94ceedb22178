"""eval/models/hybrid.py (method generative_rerank): the fusion against a hand computation, w = 1 / w = 0, one decode per
weight sweep, score_items = the scorers' own ranking, config errors before any fit, and eval.run end to end on a tiny
scratch checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_builders.dataset import load_rec_dataset
from eval import run
from eval.models.hybrid import GenerativeRerankRecommender, WeightRow, fused_scores, zscore
from eval.recommenders import CandidateRule, Query

REPO = Path(__file__).resolve().parent.parent
TINY_EVAL = REPO / "configs" / "tiny" / "eval.yaml"
TINY_SFT = REPO / "configs" / "tiny" / "sft.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the CLI sets its own thread count


# ----- fakes: a generative model with fixed candidate lists and a scorer with fixed scores, both counting calls


class FakeGenerative:
    name, checkpoint = "generative", "fake"

    def __init__(self, lists: dict[int, list[tuple[str, float]]]):
        self.lists, self.calls, self.fits = lists, [], 0

    def fit(self, dataset, train_rows, embeddings):
        self.fits += 1

    def recommend_scored(self, queries, k, num_beams=None):
        self.calls.append(([q.row for q in queries], k, num_beams))
        recs = [self.lists[q.row][:k] for q in queries]
        return [[i for i, _ in r] for r in recs], [np.array([s for _, s in r]) for r in recs]

    def score_items(self, queries, candidates):  # the union's joined items: their exact log-prob
        self.scored = [list(c) for c in candidates]
        return [np.array([self.extra[(q.row, i)] for i in items]) for q, items in zip(queries, candidates)]


class FakeScorer:
    name = "fake_scorer"

    def __init__(self, scores: dict[tuple[int, str], float]):
        self.scores, self.calls, self.fits, self.train_log = scores, 0, 0, {"epochs": 1}

    def fit(self, dataset, train_rows, embeddings):
        self.fits += 1

    def score_items(self, queries, candidates):
        self.calls += 1
        return [np.array([self.scores[(q.row, i)] for i in items]) for q, items in zip(queries, candidates)]

    def recommend(self, queries, k):  # its own top k (the union's scorer candidates)
        return [sorted((i for (r, i) in self.scores if r == q.row), key=lambda i: -self.scores[(q.row, i)])[:k]
                for q in queries]


def query(row: int, domain: str = "D") -> Query:
    return Query(row, f"u{row}", domain, (f"{domain}:h",))


# Hand-made: generative order d, c, b, a with log-probs -1, -2, -3, -4; scorer d: 0, c: 3, b: 1, a: 2.
# Deviations from the means (-2.5 and 1.5) over the std sqrt(1.25) = sqrt(5) / 2:
# z(gen) = (3, 1, -1, -3) / sqrt(5) and z(scorer) = (-3, 3, -1, 1) / sqrt(5).
HAND_GEN = [("d", -1.0), ("c", -2.0), ("b", -3.0), ("a", -4.0)]
HAND_SCORER = {(0, "d"): 0.0, (0, "c"): 3.0, (0, "b"): 1.0, (0, "a"): 2.0}


def hand_rerank(weights, num_candidates=4):
    gen, scorer = FakeGenerative({0: HAND_GEN}), FakeScorer(HAND_SCORER)
    return GenerativeRerankRecommender(gen, scorer, weights, num_candidates=num_candidates), gen, scorer


def test_fusion_matches_the_hand_computation():
    gen = np.array([s for _, s in HAND_GEN])
    scorer = np.array([0.0, 3.0, 1.0, 2.0])
    np.testing.assert_allclose(zscore(gen), np.array([3, 1, -1, -3]) / np.sqrt(5))
    np.testing.assert_allclose(zscore(scorer), np.array([-3, 3, -1, 1]) / np.sqrt(5))
    # w = 0.3: 0.3 (3, 1, -1, -3) + 0.7 (-3, 3, -1, 1) = (-1.2, 2.4, -1.0, -0.2), over sqrt(5)
    np.testing.assert_allclose(fused_scores(gen, scorer, 0.3), np.array([-1.2, 2.4, -1.0, -0.2]) / np.sqrt(5))
    # w = 0.5: (0, 2, -1, -1) / sqrt(5): b and a tie; the generative order puts b first (by id or by scorer: a)
    np.testing.assert_allclose(fused_scores(gen, scorer, 0.5), np.array([0, 2, -1, -1]) / np.sqrt(5), atol=1e-12)
    rec, _, _ = hand_rerank([0.3, 0.5])
    rec.fit(None, [], None)
    rows = rec.rows()
    assert [r.name for r in rows] == ["generative_rerank[w=0.3]", "generative_rerank[w=0.5]"]
    assert rows[0].recommend([query(0)], 4) == [["c", "a", "b", "d"]]
    assert rows[1].recommend([query(0)], 4) == [["c", "d", "b", "a"]]
    assert rows[0].recommend([query(0)], 2) == [["c", "a"]]


def test_union_joins_the_scorers_top_items_with_their_exact_generative_scores():
    # beams d, c (log-probs -1, -2); the scorer's own top 3 is e (4), c (3), a (2): e and a join, c is a beam.
    # The generative model scores the joined items e: -3, a: -5. Union d, c, e, a:
    # gen (-1, -2, -3, -5): mean -2.75, dev (1.75, .75, -.25, -2.25), var 2.1875
    # scorer (0, 3, 4, 2): mean 2.25, dev (-2.25, .75, 1.75, -.25), var 2.1875 (same spread)
    gen = FakeGenerative({0: [("d", -1.0), ("c", -2.0)]})
    gen.extra = {(0, "e"): -3.0, (0, "a"): -5.0}
    scorer = FakeScorer({(0, "d"): 0.0, (0, "c"): 3.0, (0, "e"): 4.0, (0, "a"): 2.0})
    rec = GenerativeRerankRecommender(gen, scorer, [0.0, 0.5, 1.0], num_candidates=2, scorer_candidates=3)
    w0, w05, w1 = rec.rows()
    rec.fit(None, [], None)
    (cands,) = rec.candidates([query(0)], 2)
    assert cands.items == ("d", "c", "e", "a") and gen.scored == [["e", "a"]]  # only the joined items scored
    np.testing.assert_array_equal(cands.generative, [-1.0, -2.0, -3.0, -5.0])
    np.testing.assert_array_equal(cands.scorer, [0.0, 3.0, 4.0, 2.0])
    # w = 0.5: (dev_g + dev_s) / 2 / sqrt(2.1875) ∝ (-0.25, 0.75, 0.75, -1.25): c and e tie, c (a beam) first
    assert w05.recommend([query(0)], 4) == [["c", "e", "d", "a"]]
    assert w0.recommend([query(0)], 2) == [["e", "c"]] == scorer.recommend([query(0)], 2)  # the scorer's own top
    assert w1.recommend([query(0)], 4) == [["d", "c", "e", "a"]]
    assert rec.train_log["scorer_candidates"] == 3
    with pytest.raises(ValueError, match="scorer_candidates=-1"):
        GenerativeRerankRecommender(gen, scorer, [0.5], scorer_candidates=-1)


def test_zscore_of_a_constant_list_is_zero_and_the_generative_order_decides():
    np.testing.assert_array_equal(zscore(np.array([2.0, 2.0, 2.0])), np.zeros(3))
    gen = FakeGenerative({0: HAND_GEN})
    flat = FakeScorer({(0, i): 5.0 for i in "abcd"})
    (row,) = GenerativeRerankRecommender(gen, flat, [0.0], num_candidates=4).rows()
    assert row.recommend([query(0)], 4) == [["d", "c", "b", "a"]]
    with pytest.raises(ValueError, match="non-finite"):
        zscore(np.array([0.0, -np.inf]))


def random_case(n_queries=5, n=30, seed=0):
    rng = np.random.default_rng(seed)
    lists, scores = {}, {}
    for r in range(n_queries):
        items = [f"D:{j}" for j in rng.permutation(100)[:n]]
        logp = np.sort(rng.normal(size=n))[::-1].round(1)  # rounded: some exact ties, kept in generative order
        lists[r] = list(zip(items, logp.tolist()))
        scores.update({(r, i): float(s) for i, s in zip(items, rng.normal(size=n))})
    return lists, scores


def test_weight_one_is_the_generative_order_and_weight_zero_the_scorer_order():
    lists, scores = random_case()
    queries = [query(r) for r in lists]
    gen_order = [[i for i, _ in lists[q.row]] for q in queries]
    scorer_order = [sorted(items, key=lambda i: -scores[(q.row, i)]) for q, items in zip(queries, gen_order)]
    assert any(len({s for _, s in lists[r]}) < 30 for r in lists)  # the generative scores do tie
    for k in (30, 10):
        rec = GenerativeRerankRecommender(FakeGenerative(lists), FakeScorer(scores), [0.0, 1.0], num_candidates=30)
        w0, w1 = rec.rows()
        assert w1.recommend(queries, k) == [o[:k] for o in gen_order]
        assert w0.recommend(queries, k) == [o[:k] for o in scorer_order]
        (single,) = GenerativeRerankRecommender(FakeGenerative(lists), FakeScorer(scores), [1.0], 30).rows()
        assert single.name == "generative_rerank" and single.recommend(queries, k) == [o[:k] for o in gen_order]


def test_a_weight_sweep_fits_once_and_decodes_once():
    lists, scores = random_case(n_queries=4, n=8)
    gen, scorer = FakeGenerative(lists), FakeScorer(scores)
    rows = GenerativeRerankRecommender(gen, scorer, [0.0, 0.5, 1.0], num_candidates=6).rows()
    assert all(isinstance(r, WeightRow) for r in rows)
    assert [r.latency_of for r in rows] == [None, "generative_rerank[w=0]", "generative_rerank[w=0]"]
    dataset, train_rows = "dataset", []
    for r in rows:
        r.fit(dataset, train_rows, None)
    assert (gen.fits, scorer.fits) == (1, 1)
    batches = [[query(0), query(1)], [query(2), query(3)]]
    outs = [[r.recommend(b, 5) for b in batches] for r in rows]
    assert gen.calls == [([0, 1], 6, 6), ([2, 3], 6, 6)]  # num_beams = max(num_candidates, k); one decode per batch
    assert scorer.calls == 2
    assert outs[2] == [[[i for i, _ in lists[q.row]][:5] for q in b] for b in batches]  # w = 1 from the cache
    assert outs[0] != outs[2]
    rows[1].recommend([query(0)], 8)  # a larger k is another decode: num_beams = max(6, 8)
    assert gen.calls[-1] == ([0], 8, 8)
    rows[0].recommend([query(1)], 5)  # the first row always decodes (its latency is the sweep's)
    assert len(gen.calls) == 4 and "shares_fit_and_decode_with" in rows[1].train_log
    rows[0].fit("another dataset", train_rows, None)  # a new fit refits and forgets the cache
    assert (gen.fits, scorer.fits) == (2, 2)
    rows[2].recommend([query(0)], 5)
    assert len(gen.calls) == 5


@pytest.mark.parametrize("kwargs, message", [
    ({"weights": []}, "at least one weight"),
    ({"weights": [0.5, 1.2]}, "outside \\[0, 1\\]"),
    ({"weights": [float("nan")]}, "outside \\[0, 1\\]"),
    ({"weights": [0.5, 0.5]}, "repeat"),
    ({"weights": [0.5], "num_candidates": 0}, "at least 1"),
    ({"weights": [0.5], "fusion": "rrf"}, "fusion='rrf'"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerativeRerankRecommender(FakeGenerative({}), FakeScorer({}), **kwargs)


# ----- real models: score_items is each scorer's own ranking; the rerank on a tiny scratch checkpoint


def tiny_args(*extra: str) -> run.EvalArgs:
    from trl import TrlParser

    (a,) = TrlParser((run.EvalArgs,)).parse_args_and_config(
        args=["--config", str(TINY_EVAL), "--dense_epochs", "1", "--dense_hidden", "16", "--dense_rank", "4", *extra])
    return a


@pytest.mark.parametrize("scorer", ["sasrec", "stars", "mini_xpert"])
def test_score_items_ranks_like_the_scorers_recommend(scorer, tmp_path):
    from test_eval import write_tiny

    dataset_dir, emb_dir = write_tiny(tmp_path)
    dataset, embeddings = load_rec_dataset(dataset_dir), np.load(emb_dir / "embeddings.npy")
    (rec,) = run.RERANK_SCORERS[scorer](tiny_args(), CandidateRule())
    train_rows = dataset.splits["train"].to_list()
    rec.fit(dataset, train_rows, embeddings)
    queries = [Query(i, r["user_id"], r["domain"], tuple(r["history"])) for i, r in
               enumerate(dataset.splits["test"].to_list())]
    rng = np.random.default_rng(0)
    domain_items = {d: [i for i, dd in zip(dataset.items["item_id"], dataset.items["domain"]) if dd == d]
                    for d in set(dataset.items["domain"])}
    candidates = [list(rng.permutation(domain_items[q.domain])) for q in queries]  # every domain item, shuffled
    scores = rec.score_items(queries, candidates)
    assert [len(s) for s in scores] == [len(c) for c in candidates] and scores[0].dtype == np.float64
    by_score = [[c[j] for j in np.argsort(-s, kind="stable")] for c, s in zip(candidates, scores)]
    assert by_score == rec.recommend(queries, 20)
    with pytest.raises(KeyError, match="not in the catalogue"):
        rec.score_items(queries[:1], [["nope"]])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return scratch_pipeline(tmp_path_factory.mktemp("hybrid"))


def scratch_pipeline(root: Path) -> tuple[Path, Path, Path]:
    """``(dataset, embeddings, checkpoint)``: the eval tests' two domains of 20 items (+ random embeddings), a
    handmade SID artifact (item k of the catalogue: SID (k // 5, k % 5)) and a scratch SFT checkpoint trained on
    them for 3 steps."""
    from sft.train import run_sft as main
    from test_eval import write_tiny
    from tokenization.artifact import write_sid_artifact

    dataset_dir, emb_dir = write_tiny(root)
    item_ids = load_rec_dataset(dataset_dir).item_ids
    codes = np.array([[k // 5, k % 5] for k in range(len(item_ids))])
    write_sid_artifact(root / "sids", item_ids, codes, {"codebook_sizes": [len(item_ids) // 5, 5],
                                                        "algorithm": "handmade", "dataset": str(dataset_dir)})
    main(["--config", str(TINY_SFT), "--dataset_dir", str(dataset_dir), "--sid_dir", str(root / "sids"),
          "--output_dir", str(root / "ckpt"), "--model_name_or_path", "scratch", "--mode", "full",
          "--weight_title2sid", "0", "--scratch_hidden_size", "32", "--scratch_layers", "2", "--scratch_heads", "2",
          "--max_steps", "3"])
    return dataset_dir, emb_dir, root / "ckpt"


def test_rerank_of_a_real_checkpoint_stays_among_its_candidates(pipeline):
    from eval.models.generative import GenerativeRecommender

    dataset_dir, _, ckpt = pipeline
    dataset = load_rec_dataset(dataset_dir)
    domain_of = dict(zip(dataset.items["item_id"], dataset.items["domain"]))
    (scorer,) = run.RERANK_SCORERS["sasrec"](tiny_args(), CandidateRule())
    generative = GenerativeRecommender(str(ckpt), num_beams=5)  # the rerank overrides it: num_beams = max(8, k)
    rows = GenerativeRerankRecommender(generative, scorer, [0.0, 0.5, 1.0], num_candidates=8).rows()
    train_rows = dataset.splits["train"].to_list()
    for r in rows:
        r.fit(dataset, train_rows, None)
    queries = [Query(i, r["user_id"], r["domain"], tuple(r["history"])) for i, r in
               enumerate(dataset.splits["test"].to_list()[:12])]
    assert len({q.domain for q in queries}) == 2
    w0, w05, w1 = (r.recommend(queries, 5) for r in rows)
    cands, logp = generative.recommend_scored(queries, 8, num_beams=8)
    scorer_lists = scorer.recommend(queries, 20)
    assert all(len(c) == 8 and np.isfinite(g).all() and (np.diff(g) <= 0).all() for c, g in zip(cands, logp))
    assert generative.recommend(queries, 5) == generative.recommend_scored(queries, 5)[0]  # its own 5 beams
    for b, q in enumerate(queries):
        for lst in (w0[b], w05[b], w1[b]):
            assert len(lst) == 5 and set(lst) <= set(cands[b]) and {domain_of[i] for i in lst} == {q.domain}
        assert w1[b] == cands[b][:5]
        assert w0[b] == [i for i in scorer_lists[b] if i in cands[b]][:5]
    assert w0 != w1  # the scorer changes something on these rows


def test_generative_score_items_equals_the_beam_scores_and_a_full_forward(pipeline):
    from eval.models.generative import GenerativeRecommender
    from rl.rollouts import completion_logprobs

    dataset_dir, _, ckpt = pipeline
    dataset = load_rec_dataset(dataset_dir)
    generative = GenerativeRecommender(str(ckpt), batch_size=3)
    generative.fit(dataset, [], None)
    queries = [Query(i, r["user_id"], r["domain"], tuple(r["history"])) for i, r in
               enumerate(dataset.splits["test"].to_list()[:7])]
    items, beam_scores = generative.recommend_scored(queries, 10, num_beams=10)
    reversed_items = [list(reversed(c)) for c in items]  # order and batch grouping must not matter
    scores = generative.score_items(queries, reversed_items)
    for s, b in zip(scores, beam_scores):
        np.testing.assert_allclose(s[::-1], b, atol=1e-4)
    # an item no beam found, checked against an unpadded, uncached forward of prompt + SID + EOS
    from decoding.recommend import history_prompts

    tok, cat = generative.tokenizer, generative.catalogue
    domain_items = [i for i, d in zip(dataset.items["item_id"], dataset.items["domain"]) if d == queries[0].domain]
    other = [i for i in domain_items if i not in items[0]][:3]
    (got,) = generative.score_items(queries[:1], [other])
    prompt = tok(history_prompts(tok, cat, [queries[0].history], generative.history_len))["input_ids"][0]
    for item, g in zip(other, got):
        sid = tok.convert_tokens_to_ids(cat.sid_tokens(item)) + [tok.eos_token_id]
        (per_token,) = completion_logprobs(generative.model, [prompt], [sid], tok.pad_token_id or 0)
        assert g == pytest.approx(sum(per_token), abs=1e-4)
    assert generative.score_items(queries[:2], [[], other])[0].shape == (0,)
    with pytest.raises(KeyError, match="candidates of history 0"):
        generative.score_items(queries[:1], [["nope"]])


def test_union_rerank_of_a_real_checkpoint_at_weight_zero_is_the_scorer(pipeline):
    from eval.models.generative import GenerativeRecommender

    dataset_dir, _, ckpt = pipeline
    dataset = load_rec_dataset(dataset_dir)
    (scorer,) = run.RERANK_SCORERS["sasrec"](tiny_args(), CandidateRule())
    rows = GenerativeRerankRecommender(GenerativeRecommender(str(ckpt)), scorer, [0.0, 1.0], num_candidates=5,
                                       scorer_candidates=8).rows()
    for r in rows:
        r.fit(dataset, dataset.splits["train"].to_list(), None)
    queries = [Query(i, r["user_id"], r["domain"], tuple(r["history"])) for i, r in
               enumerate(dataset.splits["test"].to_list()[:12])]
    w0, w1 = (r.recommend(queries, 5) for r in rows)
    assert w0 == [list(x) for x in scorer.recommend(queries, 5)]
    beams = rows[0].parent.generative.recommend_scored(queries, 5, num_beams=5)[0]
    assert all(set(a) <= set(b) | set(s) for a, b, s in zip(w1, beams, scorer.recommend(queries, 8)))


def cli(pipeline, out: Path, *extra: str) -> dict:
    dataset_dir, emb_dir, ckpt = pipeline
    return run.run_eval(["--config", str(TINY_EVAL), "--dataset", str(dataset_dir), "--embeddings", str(emb_dir),
                     "--output_dir", str(out), "--generative_checkpoint", str(ckpt), "--generative_num_beams", "12",
                     "--rerank_candidates", "12", "--latency_rows", "2", *extra])


@pytest.mark.parametrize("args, message", [
    (["--rerank_scorer", "bm25"], "`rerank_scorer`: 'bm25' is not one of"),
    (["--rerank_weights", "0.5", "1.5"], "outside \\[0, 1\\]"),
    (["--rerank_weights", "-0.1"], "outside \\[0, 1\\]"),
    (["--rerank_weights", "0.5", "0.5"], "repeat"),
    (["--rerank_candidates", "5"], "rerank_candidates: 5 is smaller than max\\(ks\\)=10"),
    (["--generative_checkpoint", ""], "generative_checkpoint: methods generative / generative_rerank / generative_cold need"),
    (["--embeddings", "", "--rerank_scorer", "stars"], "embeddings: methods \\['stars'\\]|rerank_scorer 'stars' needs"),
    (["--embeddings", ""], "rerank_scorer 'sasrec_semantic' needs it"),  # the default scorer
    ([], "FITTED"),  # control: a valid config gets as far as fitting
])
def test_config_errors_come_before_any_fit(pipeline, tmp_path, monkeypatch, args, message):
    from eval.models.generative import GenerativeRecommender
    from eval.recommenders import PopularityRecommender
    from eval.models.sasrec import SASRecRecommender

    def fitted(*a, **k):
        raise RuntimeError("FITTED")

    for cls in (PopularityRecommender, GenerativeRecommender, GenerativeRerankRecommender, SASRecRecommender):
        monkeypatch.setattr(cls, "fit", fitted)
    with pytest.raises(RuntimeError if message == "FITTED" else ValueError, match=message):
        cli(pipeline, tmp_path / "eval", "--methods", "popularity", "generative_rerank", *args)


def test_cli_end_to_end_generative_and_rerank_rows(pipeline, tmp_path):
    metrics = cli(pipeline, tmp_path / "eval", "--methods", "generative", "generative_rerank")
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["method_order"] == ["generative", "generative_rerank"] == list(metrics["methods"])
    for name in on_disk["method_order"]:
        assert on_disk["methods"][name]["all"]["rows"] == 40 and 0 <= on_disk["methods"][name]["all"]["hr@10"] <= 1
        assert on_disk["methods"][name]["all"]["invalid_rate"] == 0
    log = on_disk["training"]["generative_rerank"]
    assert log["scorer"] == "sasrec_semantic" and log["weights"] == [0.5] and log["num_candidates"] == 12
    assert on_disk["config"]["rerank_weights"] == [0.5] and on_disk["latency_ms"]["generative_rerank"]["n"] == 2


def test_cli_weight_sweep_rows_and_weight_one_equals_the_generative_row(pipeline, tmp_path):
    metrics = cli(pipeline, tmp_path / "eval", "--methods", "generative", "generative_rerank",
                  "--rerank_scorer", "sasrec", "--rerank_weights", "0", "1")
    assert metrics["method_order"] == ["generative", "generative_rerank[w=0]", "generative_rerank[w=1]"]
    # same beam search (12 beams) and w = 1 keeps its order: every metric of the generative row
    assert metrics["methods"]["generative_rerank[w=1]"] == metrics["methods"]["generative"]
    assert metrics["latency_ms"]["generative_rerank[w=1]"] == metrics["latency_ms"]["generative_rerank[w=0]"]
    assert metrics["training"]["generative_rerank[w=1]"]["shares_fit_and_decode_with"] == "generative_rerank[w=0]"


@pytest.mark.parametrize("config", ["amazon18_generative.yaml", "amazon18_generative_valid.yaml"])
def test_the_hybrid_scorers_train_like_their_own_rows(config):
    """A scorer inside generative_rerank must be the model of its own row: every sasrec_/semantic_/stars_/dense_
    setting of the main evaluation config is set, equal, in the configs that run the hybrid."""
    import yaml

    main = yaml.safe_load((REPO / "configs" / "eval" / "amazon18.yaml").read_text())
    other = yaml.safe_load((REPO / "configs" / "eval" / config).read_text())
    keys = [k for k in main if k.split("_")[0] in ("sasrec", "semantic", "stars", "dense")]
    assert len(keys) > 30 and {k: other.get(k) for k in keys} == {k: main[k] for k in keys}
