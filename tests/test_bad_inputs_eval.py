"""`python -m eval.run` on bad input: one `error:` line naming the problem, exit 2, nothing written (issue #11);
and the run-level fixes: any `ks`, constraints checked before fitting, per-method partial metrics, published rows
only for the data they belong to, history length from the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data_builders.dataset import load_rec_dataset
from eval import run
from eval.published import published_domains, published_sources, published_table
from tests.test_eval import TINY_CONFIG, write_tiny


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return write_tiny(tmp_path_factory.mktemp("tiny_bad"))


def base(tiny, out: Path) -> list[str]:
    dataset, embeddings = tiny
    return ["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(embeddings),
            "--output_dir", str(out), "--methods", "popularity"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def corrupt_copy(tiny, tmp_path: Path, which: int, name: str, content: str) -> Path:
    """A copy of the dataset (which=0) or embeddings (1) directory with one file replaced."""
    import shutil

    src = tiny[which]
    dst = tmp_path / f"copy{which}"
    shutil.copytree(src, dst)
    (dst / name).write_text(content)
    return dst


def fake_checkpoint(tiny, tmp_path: Path, **meta) -> str:
    """A directory that passes as an SFT checkpoint up to its genrec_sft.json (no weights: nothing may load them)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    if "raw" in meta:
        (ckpt / "genrec_sft.json").write_text(meta["raw"])
    else:
        dataset_hash = json.loads((tiny[0] / "meta.json").read_text())["dataset_hash"]
        (ckpt / "genrec_sft.json").write_text(json.dumps({"dataset_hash": dataset_hash, **meta}))
    return str(ckpt)


def generative(tiny, tmp_path: Path, *extra: str, **meta) -> list[str]:
    return ["--methods", "popularity", "generative", "--generative_checkpoint", fake_checkpoint(tiny, tmp_path, **meta),
            *extra]


def predictions(tmp_path: Path, content: str | bytes) -> list[str]:
    return ["--methods", "popularity", "predictions", "--predictions_files", f"p={write(tmp_path / 'p.jsonl', content)}"]


# id, extra args (callable of (tiny, tmp_path) or list), expected substring of the error line
CASES = [
    ("dataset_left_out", ["--dataset", ""], "dataset: is required"),
    ("output_dir_left_out", ["--output_dir", ""], "output_dir: is required"),
    ("time_budget_negative", ["--methods", "sasrec", "--sasrec_time_budget_minutes", "-1"],
     "`sasrec_time_budget_minutes` must be in [0, inf]"),
    ("short_history_negative", ["--short_history_max", "-1"], "`short_history_max` must be in [0, inf]"),
    ("predictions_not_utf8", lambda t, p: predictions(p, b'{"row": 0, "items": ["x"]}\n\xff\xfe\n'),
     "p.jsonl, line 2: not UTF-8 text"),
    ("predictions_not_json", lambda t, p: predictions(p, '{"row": 0, "items": ["x"]}\n{row: 1}\n'),
     "p.jsonl, line 2: not JSON"),
    ("predictions_not_object", lambda t, p: predictions(p, '[0, ["x"]]\n'), "line 1: expected a JSON object"),
    ("predictions_empty_items", lambda t, p: predictions(p, '{"row": 0, "items": []}\n'),
     "line 1: empty 'items' list for row 0"),
    ("predictions_incomplete", lambda t, p: predictions(p, '{"row": 0, "items": ["x"]}\n'),
     "no prediction for 39 of 40 test rows"),
    ("include_corrupt", lambda t, p: ["--include_metrics", str(write(p / "m.json", '{"format": '))],
     "m.json, line 1: metrics file is not valid JSON"),
    ("include_not_metrics", lambda t, p: ["--include_metrics", str(write(p / "m.json", "[1, 2]"))],
     "not an eval metrics file"),
    ("checkpoint_of_other_dataset", lambda t, p: generative(t, p, dataset_hash="0" * 64),
     "was trained on dataset 000000000000"),
    ("checkpoint_meta_corrupt", lambda t, p: generative(t, p, raw="{"), "SFT checkpoint meta is not valid JSON"),
    ("checkpoint_sid_dir_missing", lambda t, p: generative(t, p, sid_dir="/nonexistent/sids"),
     "/nonexistent/sids: SID artifact of"),
    ("checkpoint_sids_of_other_dataset", lambda t, p: generative(t, p, sid_dir=str(write(
        p / "sids" / "meta.json", json.dumps({"inputs": {"dataset_hash": "0" * 64}})).parent)),
     "its SID artifact"),
    ("beams_below_request_with_exclude_history",
     lambda t, p: generative(t, p, "--exclude_history", "true", "--generative_num_beams", "10"),
     "generative_num_beams: 10 beams cannot fill the"),
    ("embeddings_unused_of_other_data", lambda t, p: ["--embeddings", str(corrupt_copy(
        t, p, 1, "meta.json", json.dumps({"format": "genrec-embeddings/1", "n_items": 40, "dim": 16,
                                          "dataset_hash": "0" * 64})))],
     "embeddings (no configured method uses them"),
    ("ks_zero", ["--ks", "0", "5"], "every K must be >= 1"),
    ("ks_empty_dup", ["--ks", "5", "5"], "ks: has duplicates"),
    ("ks_too_large", ["--ks", "5", "50"], "K=50 is larger than the catalogue"),
    ("ks_not_int", ["--ks", "five"], "invalid int value: 'five'"),
    ("max_rows_negative", ["--max_rows", "-5"], "`max_rows` must be in [0, inf]"),
    ("batch_size_zero", ["--batch_size", "0"], "`batch_size` must be in [1, inf]"),
    ("threads_zero", ["--threads", "0"], "`threads` must be in [1, inf]"),
    ("seed_overflow", ["--seed", str(2**40)], "`seed` must be in [0, 4294967295]"),
    ("history_len_negative", ["--history_len", "-3"], "`history_len` must be in [0, inf]"),
    ("unknown_method", ["--methods", "popularity", "gru4rec"], "unknown method(s) ['gru4rec']"),
    ("unknown_split", ["--split", "dev"], "`split`: 'dev' is not one of"),
    ("test_in_train", ["--train_splits", "train", "test"], "both evaluated and trained on"),
    ("lr_zero", ["--methods", "sasrec", "--sasrec_lr", "0"], "`sasrec_lr` must be in (0, inf]"),
    ("dropout_one", ["--methods", "sasrec", "--sasrec_dropout", "1.0"], "`sasrec_dropout` must be in [0, 1)"),
    ("head_share", ["--head_share", "1.5"], "`head_share` must be in (0, 1)"),
    ("beams_below_k", ["--methods", "generative", "--generative_checkpoint", "x", "--generative_num_beams", "5"],
     "generative_num_beams: 5 beams cannot fill a top-10 list"),
    ("generative_no_ckpt", ["--methods", "generative"], "need a checkpoint directory"),
    ("generative_missing_ckpt", ["--methods", "generative", "--generative_checkpoint", "/nonexistent/ckpt"],
     "/nonexistent/ckpt: generative_checkpoint not found"),
    ("predictions_without_files", ["--methods", "predictions"], "needs predictions_files"),
    ("predictions_missing_file", ["--methods", "predictions", "--predictions_files", "p=/nonexistent/p.jsonl"],
     "/nonexistent/p.jsonl: predictions file not found"),
    ("stars_without_embeddings", ["--methods", "stars", "--embeddings", ""], "methods ['stars'] need item embeddings"),
    ("missing_dataset", ["--dataset", "/nonexistent/dataset"], "/nonexistent/dataset: dataset not found"),
    ("include_missing", ["--include_metrics", "/nonexistent/m.json"], "include_metrics file not found"),
    ("unknown_key", lambda t, p: ["--config", str(write(p / "c.yaml", TINY_CONFIG.read_text() + "sasrec_epoch: 3\n"))],
     "unknown config key(s): sasrec_epoch (did you mean sasrec_epochs?)"),
    ("wrong_type_in_yaml", lambda t, p: ["--config", str(write(p / "c.yaml", TINY_CONFIG.read_text()
                                                               + "latency_rows: [5]\n"))],
     "`latency_rows` must be int, got [5]"),
    ("yaml_not_mapping", lambda t, p: ["--config", str(write(p / "c.yaml", "- a\n"))], "must contain a YAML mapping"),
    ("config_missing", lambda t, p: ["--config", str(p / "none.yaml")], "config file not found"),
    ("corrupt_dataset_meta", lambda t, p: ["--dataset", str(corrupt_copy(t, p, 0, "meta.json", "{not json"))],
     "meta.json"),
    ("embeddings_of_other_data", lambda t, p: ["--methods", "stars", "--embeddings", str(corrupt_copy(
        t, p, 1, "meta.json", json.dumps({"format": "genrec-embeddings/1", "n_items": 40, "dim": 16,
                                          "dataset_hash": "0" * 64})))], "embeddings"),
    ("include_other_dataset", lambda t, p: ["--include_metrics", str(write(p / "m.json", json.dumps(
        {"format": "genrec-eval/1", "dataset_hash": "0" * 64, "dataset": "x", "split": "test"})))],
     "not on this dataset"),
    ("output_is_a_file", lambda t, p: ["--output_dir", str(write(p / "out_file", "precious"))],
     "is an existing file"),
]


@pytest.mark.parametrize("case_id, extra, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny, tmp_path, capsys, case_id, extra, message):
    out = tmp_path / "out"
    extra = extra(tiny, tmp_path) if callable(extra) else extra
    args = base(tiny, out) + extra
    if extra[:1] == ["--config"]:  # the case's own config file replaces the tiny one
        args = args[2:]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in err, err
    assert not out.exists()
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == before, f"left behind: {set(after) - set(before)}"
    if case_id == "output_is_a_file":
        assert (tmp_path / "out_file").read_text() == "precious"


def test_enough_cases():
    assert len(CASES) >= 45


@pytest.mark.parametrize("ks", [["1", "3", "5"], ["5", "20"], ["2"]])
def test_any_ks_list_writes_metrics_and_report(tiny, tmp_path, ks):
    """Issue #11 items 3 and 9: ks without 10 or without 3 used to crash the report after every method ran."""
    metrics = run.run_eval(base(tiny, tmp_path / "e") + ["--ks", *ks])
    kref = 10 if "10" in ks else max([int(k) for k in ks if int(k) < 10] or [int(ks[0])])
    assert set(metrics["methods"]["popularity"]["all"]) >= {f"hr@{k}" for k in ks} | {f"coverage@{kref}"}
    report = (tmp_path / "e" / "report.md").read_text()
    assert f"| HR@{ks[0]} | NDCG@{ks[0]} |" in report and "| popularity |" in report
    assert not (tmp_path / "e" / "metrics.partial.json").exists()


def test_a_late_failure_keeps_the_finished_methods(tiny, tmp_path, monkeypatch):
    """Item 9: every finished method is on disk before the next one starts."""
    from eval.models.sasrec import SASRecRecommender

    def broken(*a, **k):
        raise RuntimeError("a bug in the second method")

    monkeypatch.setattr(SASRecRecommender, "fit", broken)
    with pytest.raises(RuntimeError):
        run.run_eval(base(tiny, tmp_path / "e") + ["--methods", "popularity", "sasrec"])
    partial = json.loads((tmp_path / "e" / "metrics.partial.json").read_text())
    assert partial["partial"] is True and list(partial["methods"]) == ["popularity"]
    assert 0 <= partial["methods"]["popularity"]["all"]["hr@10"] <= 1


def test_published_rows_only_where_the_dataset_metadata_carries_them(tiny):
    """Published rows come from the dataset's meta (``source.published``, per part of a merged dataset), never from a
    table inside the evaluation code."""
    meta = load_rec_dataset(tiny[0]).meta
    assert published_domains(meta) == [] and published_table(meta) == {}
    record = {"source": "a paper", "label": "published, other rows", "protocol": "their train split",
              "test_file_sha256": "c" * 64, "models": {"SASRec": {"hr@10": 0.11, "ndcg@10": 0.08}}}
    fake = {"source": {"format": "merged", "parts": [
        {"format": "minionerec", "name": "Office_Products", "published": record},
        {"format": "minionerec", "name": "Industrial_and_Scientific", "files": {"x.test.csv": "f" * 64}},
    ]}}
    assert published_domains(fake) == ["Office_Products"]
    assert published_table(fake) == {"SASRec": {"Office_Products": {"hr@10": 0.11, "ndcg@10": 0.08}}}
    assert published_sources(fake)["Office_Products"]["label"] == "published, other rows"


def test_history_len_defaults_to_the_dataset_and_reaches_the_models(tmp_path):
    """Item 11: SASRec/STARS cut histories to 10 whatever the dataset kept; now they follow its max_history."""
    from data_builders.dataset import write_rec_dataset
    from tests.test_eval import tiny_built

    built = tiny_built()
    write_rec_dataset(built, tmp_path / "d", config={"max_history": 20})
    (a,) = run.parse_config((run.EvalArgs,), ["--config", str(TINY_CONFIG), "--dataset", str(tmp_path / "d")])
    resolved = run.resolve_history_len(a, load_rec_dataset(tmp_path / "d"))
    assert resolved.history_len == 20
    assert run.sasrec_config(resolved, semantic=False).max_len == 20
    assert run.sasrec_config(resolved, semantic=True).max_len == 20
    (stars,) = run.build_stars(resolved, run.CandidateRule())
    assert stars.cfg.max_len == 20
    assert run.dense_config(resolved, "mini_xpert").history_len == 20
    explicit = run.resolve_history_len(run.EvalArgs(history_len=5), load_rec_dataset(tmp_path / "d"))
    assert run.sasrec_config(explicit, semantic=False).max_len == 5


@pytest.mark.parametrize("bad", ["predictions", "checkpoint"])
def test_late_inputs_are_checked_before_any_method_fits(tiny, tmp_path, monkeypatch, capsys, bad):
    """Item 9: a bad predictions file or a checkpoint of other data used to fail only after SASRec had trained."""
    from eval.recommenders import PopularityRecommender

    fitted = []
    monkeypatch.setattr(PopularityRecommender, "fit", lambda self, *a: fitted.append(self.name))
    extra = (predictions(tmp_path, '{"row": 0, "items": ["x"]}\n') if bad == "predictions"
             else generative(tiny, tmp_path, dataset_hash="0" * 64))
    assert run.main(base(tiny, tmp_path / "out") + extra) == 2
    assert "error: " in capsys.readouterr().err and fitted == []


def test_unsorted_ks_are_sorted(tiny, tmp_path):
    metrics = run.run_eval(base(tiny, tmp_path / "e") + ["--ks", "10", "1", "5"])
    assert metrics["ks"] == [1, 5, 10]
    report = (tmp_path / "e" / "report.md").read_text()
    assert "| HR@1 | NDCG@1 | HR@5 | NDCG@5 | HR@10 | NDCG@10 |" in report
