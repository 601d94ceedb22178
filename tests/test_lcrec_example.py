"""The shipped LC-Rec example config set end to end on the toy LC-Rec folder (issue #11 items 10-12):
data -> SIDs from the dataset's own index.json -> a 2-step scratch SFT -> eval, every step through its CLI's
``main`` with only the paths overridden. No item text is used anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "lcrec"
CONFIGS = {step: REPO / "configs" / step / "lcrec_example.yaml" for step in ("data", "tokenization", "sft", "eval")}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_every_example_config_names_its_command_and_the_example_paths():
    for step, cfg in CONFIGS.items():
        first = cfg.read_text().splitlines()[0]
        assert first.startswith("# python") and str(cfg.relative_to(REPO)) in first, (step, first)
        assert "artifacts/amazon18" not in cfg.read_text(), step  # nothing falls back to the demo's artifacts


def test_lcrec_chain_data_sids_sft_eval(tmp_path, capsys):
    from data_builders import build as data_build
    from eval import run as eval_run
    from sft import train as sft_train
    from tokenization import build as tok_build

    root = tmp_path / "lcrec"
    assert data_build.main(["--config", str(CONFIGS["data"]), "--data_dir", str(FIXTURE),
                            "--output_dir", str(root)]) == 0
    dataset = root / "dataset"
    assert not (root / "embeddings").exists()  # the example runs without item text
    assert tok_build.main(["--config", str(CONFIGS["tokenization"]), "--dataset", str(dataset),
                           "--external_index", str(dataset / "sids.index.json"),
                           "--output_dir", str(root / "sids")]) == 0
    index = json.loads((FIXTURE / "Toy.index.json").read_text())
    assert json.loads((root / "sids" / "index.json").read_text()) == index  # the dataset's own SIDs, unchanged
    assert sft_train.main(["--config", str(CONFIGS["sft"]), "--dataset_dir", str(dataset),
                           "--sid_dir", str(root / "sids"), "--output_dir", str(root / "sft"),
                           "--max_steps", "2"]) == 0
    capsys.readouterr()
    assert eval_run.main(["--config", str(CONFIGS["eval"]), "--dataset", str(dataset),
                          "--generative_checkpoint", str(root / "sft"), "--output_dir", str(root / "eval"),
                          "--latency_rows", "2"]) == 0
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert metrics["method_order"] == ["popularity", "sasrec", "generative"]
    assert metrics["methods"]["generative"]["all"]["invalid_rate"] == 0.0
    # Item 10: an LC-Rec dataset gets no Amazon-2018 table and no note about MiniOneRec's train.csv.
    report = (root / "eval" / "report.md").read_text()
    assert metrics["published"] == {} and "(published, different training data)" not in report
    assert "train.csv" not in report and "leak-free" not in report and "No published rows" in report
    # Item 11: history_len follows the dataset (max_history 20 in the example), and the report says what each saw.
    assert metrics["history_len"] == 20 and metrics["training"]["sasrec"]["config"]["max_len"] == 20
    assert metrics["training"]["sasrec"]["history"] == "newest 20"
    assert "| sasrec |" in report and "newest 20" in report and "see the newest 20 items" in report


def test_text_methods_without_embeddings_name_the_method_and_the_key(tmp_path, capsys):
    """Item 12: no `embeddings:` for a dataset without item text is a clear error, never the demo's path."""
    from data_builders import build as data_build
    from eval import run as eval_run

    root = tmp_path / "lcrec"
    assert data_build.main(["--config", str(CONFIGS["data"]), "--data_dir", str(FIXTURE),
                            "--output_dir", str(root)]) == 0
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("\n".join(line for line in CONFIGS["eval"].read_text().splitlines()
                             if not line.startswith("embeddings:")) + "\n")
    capsys.readouterr()
    assert eval_run.main(["--config", str(cfg), "--dataset", str(root / "dataset"), "--methods", "popularity",
                          "stars", "--output_dir", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "embeddings: methods ['stars'] need item embeddings" in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


def test_amazon18_report_keeps_the_published_table_and_its_notes(tmp_path):
    """Item 10, the other half: the MiniOneRec Amazon-2018 data keeps its published rows and rebuilt-train note."""
    from eval import run as eval_run

    dataset = REPO / "artifacts" / "amazon18" / "dataset"
    if not (dataset / "meta.json").exists():
        pytest.skip("build it first: python -m data_builders.build --config configs/data/amazon18.yaml")
    metrics = eval_run.run_eval(["--config", str(REPO / "configs" / "eval" / "amazon18.yaml"), "--methods",
                                 "popularity", "--embeddings", "", "--max_rows", "200", "--latency_rows", "0",
                                 "--output_dir", str(tmp_path / "e"), "--copy_metrics_to", ""])
    assert set(metrics["published"]["SASRec"]) == {"Industrial_and_Scientific", "Office_Products"}
    report = (tmp_path / "e" / "report.md").read_text()
    assert "| SASRec (published, different training data) |" in report
    assert "train split rebuilt from earliest valid/test histories" in report
