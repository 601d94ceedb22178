"""The eval CLI end to end on a tiny synthetic dataset; predictions files; bad input; every shipped config parses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_builders.dataset import BuiltDataset, Item, Row, load_rec_dataset, write_json, write_rec_dataset
from eval import run
from eval.evaluate import EvalRows
from eval.recommenders import CandidateRule, PopularityRecommender
from eval.report import load_metrics

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "configs" / "tiny" / "eval.yaml"
DOMAINS = ("Industrial_and_Scientific", "Office_Products")  # the published table's names
N_ITEMS = 20


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the CLI sets its own thread count


def tiny_built(seed: int = 0, name: str = "tiny") -> BuiltDataset:
    """Two domains of 20 items; each user walks a per-domain successor permutation (with 20% random jumps)."""
    rng = np.random.default_rng(seed)
    items = [Item(f"{d}:{j}", d, title=f"{d} item {j}", brand=f"brand{j % 3}") for d in DOMAINS for j in range(N_ITEMS)]
    perm = rng.permutation(N_ITEMS)
    rows, source_row = [], {"valid": {d: 0 for d in DOMAINS}, "test": {d: 0 for d in DOMAINS}}
    for u in range(40):
        d = DOMAINS[u % 2]
        seq = [int(rng.integers(N_ITEMS))]
        for _ in range(int(rng.integers(4, 9))):
            seq.append(int(perm[seq[-1]]) if rng.random() < 0.8 else int(rng.integers(N_ITEMS)))
        ids = [f"{d}:{j}" for j in seq]
        for t in range(1, len(ids)):
            split = "test" if t == len(ids) - 1 else "valid" if t == len(ids) - 2 else "train"
            src = -1
            if split != "train":
                src, source_row[split][d] = source_row[split][d], source_row[split][d] + 1
            rows.append(Row(f"U{u}", d, ids[max(0, t - 10):t], ids[t], split, -1, src))
    return BuiltDataset(items=items, rows=rows, source={"format": name})


def write_tiny(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Dataset + a random unit-norm embeddings artifact (the encoder is not needed for eval tests)."""
    write_rec_dataset(tiny_built(seed), root / "dataset")
    ds = load_rec_dataset(root / "dataset")
    emb = np.random.default_rng(seed).normal(size=(len(ds.item_ids), 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    (root / "embeddings").mkdir()
    np.save(root / "embeddings" / "embeddings.npy", emb)
    write_json(root / "embeddings" / "meta.json", {"format": "genrec-embeddings/1", "n_items": len(emb), "dim": 16,
                                                   "dataset_hash": ds.dataset_hash})
    return root / "dataset", root / "embeddings"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny(tmp_path_factory.mktemp("tiny"))


def cli(tiny, out: Path, *extra: str) -> dict:
    dataset, embeddings = tiny
    return run.run_eval(["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(embeddings),
                     "--output_dir", str(out), *extra])


def test_cli_end_to_end_report_and_plots(tiny, tmp_path):
    metrics = cli(tiny, tmp_path / "eval")
    names = ["popularity", "sasrec", "sasrec_semantic", "stars"]
    assert list(metrics["methods"]) == names
    on_disk = load_metrics(tmp_path / "eval" / "metrics.json", metrics["dataset_hash"], "test")
    for name in names:
        for dom in ("all", *DOMAINS):
            m = on_disk["methods"][name][dom]
            assert 0.0 <= m["hr@1"] <= m["hr@5"] <= m["hr@10"] <= 1.0
            assert m["invalid_rate"] == 0.0 and m["rows"] == (40 if dom == "all" else 20)
        assert on_disk["latency_ms"][name]["n"] == 5
        assert on_disk["training"][name]["seconds"] >= 0
    report = (tmp_path / "eval" / "report.md").read_text()
    for name in names:
        assert f"| {name} |" in report
    # Not the published test rows: no published table, and the report says why.
    assert "(published, different training data)" not in report and "No published rows" in report
    assert "python -m eval.run" in report
    for png in ("hr_at_k.png", "slices.png"):
        data = (tmp_path / "eval" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # `python -m eval.report` re-renders it, here with a cross-domain benchmark result of the same dataset
    import subprocess
    import sys

    doms = ["Industrial_and_Scientific", "Office_Products"]
    cd = {"dataset_hash": metrics["dataset_hash"], "split": "test", "domains": doms, "variants": {
        "gencdr": {d: {"ndcg@10": 0.1, "hr@10": 0.2, "ndcg@5": 0.1, "hr@5": 0.1} for d in doms}}}
    (tmp_path / "cd.json").write_text(json.dumps(cd))
    proc = subprocess.run([sys.executable, "-m", "eval.report", "--metrics", str(tmp_path / "eval" / "metrics.json"),
                           "--cross_domain_results", str(tmp_path / "cd.json")], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Cross-domain (GenCDR, seed 001)" in report and "| gencdr |" in report
    assert "| popularity |" in report


def write_predictions(tiny, path: Path, drop: int | None = None, extra: dict | None = None, meta: dict | None = None):
    """Popularity's lists (with their scores: ties rank against the target) as a predictions file: even rows keyed
    by row, odd rows by domain + source_row."""
    ds = load_rec_dataset(tiny[0])
    rows = EvalRows.from_split(ds.splits["test"])
    pop = PopularityRecommender(CandidateRule())
    pop.fit(ds, ds.splits["train"].to_list() + ds.splits["valid"].to_list(), None)
    lines = [json.dumps({"meta": meta})] if meta else []
    for q, items in zip(rows.queries, pop.recommend(rows.queries, 10)):
        if q.row == drop:
            continue
        key = {"row": q.row} if q.row % 2 == 0 else {"domain": q.domain, "source_row": q.source_row}
        lines.append(json.dumps({**key, "items": list(items), "scores": items.scores.tolist()}))
    if extra:
        lines.append(json.dumps(extra))
    path.write_text("\n".join(lines) + "\n")
    return ds


def test_predictions_file_reproduces_the_method(tiny, tmp_path):
    ds = write_predictions(tiny, tmp_path / "pop.jsonl", meta={"dataset_hash": load_rec_dataset(tiny[0]).dataset_hash,
                                                              "split": "test"})
    metrics = cli(tiny, tmp_path / "eval", "--methods", "popularity", "predictions",
                  "--predictions_files", f"pop_file={tmp_path / 'pop.jsonl'}")
    assert metrics["dataset_hash"] == ds.dataset_hash
    for key in ("hr@10", "ndcg@10", "mrr@5", "coverage@10"):
        assert metrics["methods"]["pop_file"]["all"][key] == pytest.approx(metrics["methods"]["popularity"]["all"][key])
    assert metrics["latency_ms"]["pop_file"] is None


@pytest.mark.parametrize("kwargs, message", [
    ({"drop": 3}, r"no prediction for 1 of 40 test rows, e.g. rows \[3\]"),
    ({"extra": {"row": 99, "items": ["x"]}}, "unknown row 99"),
    ({"extra": {"domain": "Office_Products", "source_row": 999, "items": []}}, "unknown row"),
    ({"extra": {"row": 0, "items": ["x"]}}, "second prediction for row 0"),
    ({"meta": {"dataset_hash": "f" * 64}}, "predictions were made for dataset ffffffffffff"),
    ({"meta": {"split": "valid"}}, "predictions are for split 'valid'"),
    ({"drop": 3, "extra": {"row": 3, "items": ["x", "y"], "scores": [1.0]}}, "'scores' must be a list of 2 numbers"),
    ({"drop": 3, "extra": {"row": 3, "items": ["x", "y"], "scores": [1.0, 2.0]}}, "'scores' must be ordered best"),
])
def test_bad_predictions_files(tiny, tmp_path, kwargs, message):
    write_predictions(tiny, tmp_path / "p.jsonl", **kwargs)
    with pytest.raises(ValueError, match=message):
        cli(tiny, tmp_path / "eval", "--methods", "predictions", "--predictions_files", str(tmp_path / "p.jsonl"))


def test_empty_prediction_list_is_an_error(tiny, tmp_path):
    path = tmp_path / "p.jsonl"
    write_predictions(tiny, path)
    lines = path.read_text().splitlines()
    lines[0] = json.dumps({"row": 0, "items": []})
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match="line 1: empty 'items' list for row 0"):
        cli(tiny, tmp_path / "eval", "--methods", "predictions", "--predictions_files", str(path))


def test_metrics_from_another_dataset_are_refused(tiny, tmp_path):
    other = write_tiny(tmp_path / "other", seed=1)
    cli(other, tmp_path / "other_eval", "--methods", "popularity")
    with pytest.raises(ValueError, match="computed on dataset .* not on this dataset"):
        cli(tiny, tmp_path / "eval", "--methods", "popularity",
            "--include_metrics", str(tmp_path / "other_eval" / "metrics.json"))
    same = cli(tiny, tmp_path / "eval_a", "--methods", "popularity")
    merged = cli(tiny, tmp_path / "eval_b", "--methods", "popularity", "--exclude_history", "true",
                 "--include_metrics", str(tmp_path / "eval_a" / "metrics.json"))
    assert set(merged["methods"]) == {"popularity", f"popularity ({tmp_path / 'eval_a' / 'metrics.json'})"}
    assert same["methods"]["popularity"]["all"]["rows"] == 40


@pytest.mark.parametrize("args, error, message", [
    (["--ks", "1", "50"], ValueError, "K=50 is larger than the catalogue ranked for 'Industrial_and_Scientific'"),
    (["--ks", "0"], ValueError, "every K must be >= 1"),
    (["--train_splits", "train", "test"], ValueError, "both evaluated and trained on"),
    (["--split", "valid", "--train_splits", "train", "test"], ValueError, "rows after the evaluated split"),
    (["--methods", "nonsense"], ValueError, "unknown method\\(s\\) \\['nonsense'\\]"),
    (["--methods", "predictions"], ValueError, "needs predictions_files"),
    (["--methods", "generative"], ValueError, "need a checkpoint directory"),
])
def test_bad_arguments(tiny, tmp_path, args, error, message):
    with pytest.raises(error, match=message):
        cli(tiny, tmp_path / "eval", "--methods", "popularity", *args)


def test_unknown_config_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_CONFIG.read_text() + "sasrec_epoch: 3\n")
    with pytest.raises(ValueError, match="sasrec_epoch"):
        run.run_eval(["--config", str(bad)])


@pytest.mark.parametrize("config", sorted((REPO / "configs" / "eval").glob("*.yaml")) + [TINY_CONFIG],
                         ids=lambda p: p.name)
def test_every_shipped_config_parses(config):
    from trl import TrlParser

    text = config.read_text()
    assert text.startswith("# python -m eval.run --config " + str(config.relative_to(REPO)))
    (args,) = TrlParser((run.EvalArgs,)).parse_args_and_config(args=["--config", str(config)])
    run.check_args(args)
    for method in args.methods:
        if method not in ("predictions", "generative"):
            assert run.METHODS[method](args, CandidateRule())  # every configured method can be built


@pytest.mark.slow
def test_popularity_on_the_real_test_rows(tmp_path):
    """Regression anchor on the embedded data: popularity is deterministic and far below the sequence models."""
    dataset = REPO / "artifacts" / "amazon18" / "dataset"
    if not (dataset / "meta.json").exists():
        pytest.skip("build it first: python -m data_builders.build --config configs/data/amazon18.yaml")
    metrics = run.run_eval(["--config", str(REPO / "configs" / "eval" / "amazon18.yaml"), "--methods", "popularity",
                        "--output_dir", str(tmp_path), "--copy_metrics_to", "", "--latency_rows", "10"])
    m = metrics["methods"]["popularity"]
    assert m["all"]["rows"] == 9399 and m["Office_Products"]["rows"] == 4866
    assert m["all"]["hr@10"] == pytest.approx(0.0551, abs=5e-4)  # ties ranked against the target (.0569 seeded)


def test_max_rows_evaluates_a_seeded_sample_with_split_indices():
    from eval.evaluate import EvalRows
    import datasets

    table = datasets.Dataset.from_list([{"user_id": f"u{i}", "domain": "d", "history": ["a"], "target": f"t{i}",
                                         "source_row": i} for i in range(50)])
    a, b = EvalRows.from_split(table, max_rows=10, seed=3), EvalRows.from_split(table, max_rows=10, seed=3)
    assert [q.row for q in a.queries] == [q.row for q in b.queries] and len(a.queries) == 10
    assert all(a.targets[j] == f"t{q.row}" for j, q in enumerate(a.queries))  # targets stay aligned
    assert len(EvalRows.from_split(table).queries) == 50


def test_included_rows_of_another_protocol_are_labelled(tiny, tmp_path):
    """Issue #11 item 14: a train-only run merged into a train + valid report must say which protocol each row used."""
    cli(tiny, tmp_path / "train_only", "--methods", "popularity", "--train_splits", "train")
    merged = cli(tiny, tmp_path / "both", "--methods", "popularity",
                 "--include_metrics", str(tmp_path / "train_only" / "metrics.json"))
    assert merged["method_order"] == ["popularity", "popularity [train only]"]
    assert merged["other_protocols"] == {"popularity [train only]": ["train"]}
    report = (tmp_path / "both" / "report.md").read_text()
    assert "| popularity [train only] |" in report
    assert "Rows marked `[train only]` come from another run trained on ['train'] (published protocol" in report
