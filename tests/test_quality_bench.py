"""benchmarks/quality_bench.py: recipe and hybrid selection read valid rows only; both protocols share test rows."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("quality_bench", REPO / "benchmarks" / "quality_bench.py")
qb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qb)


def fake_eval(path, split, methods):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps({"split": split, "methods": {
        m: {"all": {"hr@10": v, "ndcg@10": v / 2}, "D": {"hr@10": v, "ndcg@10": v / 2}} for m, v in methods.items()}}))


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """quality_bench rooted in tmp_path, with ``run`` replaced by a recorder that writes plausible outputs."""
    monkeypatch.setattr(qb, "REPO", tmp_path)
    commands: list[list[str]] = []
    scores = {"base": .10, "text": .14}

    def fake_run(cmd, log_path, threads=1):
        commands.append(cmd)
        out = tmp_path / cmd[cmd.index("--output_dir") + 1]
        if cmd[1] == "sft/train.py":
            recipe = out.name.rsplit("_s", 1)[0]
            out.mkdir(parents=True)
            curve = [{"step": 150 * i, "eval_hr@10": scores[recipe] * i / 3, "eval_ndcg@10": scores[recipe] * i / 6}
                     for i in (1, 2, 3)]
            (out / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in curve))
        elif "generative_rerank" in cmd:
            weights = cmd[cmd.index("--rerank_weights") + 1:cmd.index("--output_dir")]
            fake_eval(out, "valid", {f"generative_rerank[w={w}]": .1 + float(w) * (1 - float(w)) for w in weights})
        else:
            beams = int(cmd[cmd.index("--generative_num_beams") + 1]) if "--generative_num_beams" in cmd else 10
            seed = int(out.parent.name.rsplit("_s", 1)[1])
            fake_eval(out, "valid", {"generative": scores[out.parent.name.rsplit("_s", 1)[0]] + seed / 100
                                     + beams / 10000})
        return 1.0

    monkeypatch.setattr(qb, "run", fake_run)
    monkeypatch.setattr(qb, "RECIPES", {"base": ("b", []), "text": ("t", ["--item_text_embeddings", "E"])})
    return commands


def test_selection_sees_only_train_and_valid(bench):
    records = qb.recipes(["base", "text"], [0, 1], jobs=1)
    chosen = qb.select(records, weights=[0.0, 0.5, 1.0], scorers=["sasrec_semantic"])
    assert chosen["recipe"] == "text"  # best mean valid NDCG@10
    assert chosen["rerank_weight"] == 0.5 and chosen["rerank_scorer"] == "sasrec_semantic"
    assert chosen["num_beams"] == qb.NUM_BEAMS
    (hybrid,) = [c for c in bench if "generative_rerank" in c]  # the union of beams and the scorer's own top items
    assert int(hybrid[hybrid.index("--rerank_scorer_candidates") + 1]) > 0
    assert hybrid[hybrid.index("--generative_checkpoint") + 1].endswith("text_s0")  # the chosen recipe's run
    configs = {REPO / c[c.index("--config") + 1] for c in bench}
    import yaml

    for cfg in configs:  # every config the selection ran trains on train only / scores valid
        data = yaml.safe_load(cfg.read_text())
        assert data.get("train_splits") == ["train"], cfg
        assert data.get("split", "valid") == "valid", cfg
    assert not any("test" in c for cmd in bench for c in cmd)
    # a finished run is not repeated
    n = len(bench)
    qb.recipes(["base", "text"], [0, 1], jobs=1)
    assert len(bench) == n


def test_summary_reports_mean_and_seed_spread(bench):
    records = qb.recipes(["base"], [0, 1], jobs=1)
    (row,) = qb.summarise(records)
    assert row["valid_ndcg@10_mean"] == pytest.approx((.05 + .055) / 2 + 10 / 20000, abs=1e-4)
    assert row["valid_ndcg@10_spread"] == pytest.approx(.005, abs=1e-4)
    assert row["best_steps"] == [450, 450]


def test_curves_put_cpu_minutes_on_every_valid_point(bench):
    """Each run's CPU minutes (fake_run: 1 + 1 per run) spread over its steps: 150 / 300 / 450 -> 2/3, 4/3, 2."""
    curves = qb.curves(qb.recipes(["text"], [0], jobs=1))
    assert curves["columns"] == ["step", "cpu_minutes", "valid_ndcg@10"]
    assert curves["runs"]["text_s0"] == [[150, 0.7, round(.14 / 6, 4)], [300, 1.3, round(.28 / 6, 4)],
                                         [450, 2.0, round(.42 / 6, 4)]]


def test_no_runs_is_a_clear_error(bench):
    with pytest.raises(ValueError, match="run --parts recipes first"):
        qb.chosen_recipe([])


def test_final_model_trains_as_many_epochs_as_the_best_valid_step(monkeypatch):
    sizes = {("train",): 5000, ("train", "valid"): 6500}
    monkeypatch.setattr(qb, "packed_sequences", lambda splits: sizes[tuple(splits)])
    # best at 900 and 1100 steps of 32 sequences on 5,000 -> 6.4 epochs -> 6.4 * 6,500 / 32 = 1,300 steps
    assert qb.final_steps([900, 1100], select_batch=32, final_batch=32) == 1300
    assert qb.final_steps([1000], select_batch=32, final_batch=64) == 650


def write_metrics(path, splits, methods, dataset_hash="ab" * 32, rows=9399):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"split": "test", "train_splits": splits, "dataset_hash": dataset_hash,
                                "eval_rows": rows, "config": {"max_rows": 0, "seed": 0},
                                "methods": {m: {"all": {"hr@10": .1, "ndcg@10": .05}} for m in methods}}))


def test_both_protocols_are_assembled_from_the_same_row_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(qb, "REPO", tmp_path)
    art = tmp_path / qb.ART
    write_metrics(tmp_path / qb.EVAL_ALL, ["train", "valid"], ["stars"])
    write_metrics(art / "eval_generative" / "metrics.json", ["train", "valid"], ["generative", "generative_rerank"])
    write_metrics(tmp_path / qb.EVAL_PUBLISHED, ["train"], ["stars"])
    write_metrics(art / "eval_generative_published" / "metrics.json", ["train"], ["generative", "generative_rerank"])
    out = qb.assemble()["protocols"]
    assert out["all_prior"]["_rows"] == out["published"]["_rows"]
    assert set(out["published"]) == {"stars", "generative", "generative_rerank", "_rows"}
    # another dataset (other row ids) under one protocol, or another row count for the generative run: refused
    write_metrics(tmp_path / qb.EVAL_PUBLISHED, ["train"], ["stars"], dataset_hash="cd" * 32)
    write_metrics(art / "eval_generative_published" / "metrics.json", ["train"], ["generative"],
                  dataset_hash="cd" * 32)
    with pytest.raises(ValueError, match="the protocols scored different rows"):
        qb.assemble()
    write_metrics(art / "eval_generative_published" / "metrics.json", ["train"], ["generative"],
                  dataset_hash="cd" * 32, rows=100)
    with pytest.raises(ValueError, match="not the same rows"):
        qb.assemble()
    write_metrics(tmp_path / qb.EVAL_PUBLISHED, ["train", "valid"], ["stars"])  # trained under the wrong protocol
    with pytest.raises(ValueError, match="expected test on \\['train'\\]"):
        qb.assemble()
