"""`python -m data_builders.build`: strict config, summary, clear errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from data_builders.build import main
from data_builders.dataset import load_rec_dataset


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_build_merges_domains_and_prints_summary(tmp_path, mini_minionerec, capsys):
    second = mini_minionerec.parent / "Mini2"
    second.mkdir()
    for f in mini_minionerec.iterdir():
        (second / f.name.replace("Mini.", "Mini2.")).write_bytes(f.read_bytes())
    cfg = write_config(tmp_path / "c.yaml", f"source: minionerec\ndata_dir: {mini_minionerec.parent}\n"
                                            f"domains: [Mini, Mini2]\noutput_dir: {tmp_path / 'out'}\n")
    assert main(["--config", str(cfg), "--skip_embeddings", "true", "--show_progress", "false"]) == 0
    out = capsys.readouterr().out
    assert "Mini " in out and "Mini2" in out and "title 100%" in out
    ds = load_rec_dataset(tmp_path / "out" / "dataset")
    assert ds.item_ids[0] == "Mini:1" and set(ds.meta["domains"]) == {"Mini", "Mini2"}
    assert len(ds.splits["test"]) == 4


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", "source: minionerec\nmax_histroy: 5\n")
    assert main(["--config", str(cfg)]) == 2
    assert "unknown config key(s): max_histroy (did you mean max_history?)" in capsys.readouterr().err


def test_bad_data_exits_2_with_a_message(tmp_path, mini_minionerec, capsys):
    (mini_minionerec / "Mini.test.csv").write_text("user_id,history_item_id,item_id\nA,\"[1]\",77\n")
    cfg = write_config(tmp_path / "c.yaml", f"data_dir: {mini_minionerec.parent}\ndomains: [Mini]\n"
                                            f"output_dir: {tmp_path / 'out'}\nskip_embeddings: true\n")
    assert main(["--config", str(cfg)]) == 2
    assert "Mini.test.csv, line 2: unknown item id '77'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "dataset").exists()


def test_shipped_data_configs_parse():
    from trl import TrlParser

    from data_builders.build import DataBuildArgs

    for cfg in sorted((REPO / "configs" / "data").glob("*.yaml")):
        (args,) = TrlParser((DataBuildArgs,)).parse_args_and_config(["--config", str(cfg)])
        assert args.domains, cfg
        assert cfg.read_text().startswith("# python -m data_builders.build"), cfg


def test_module_entry_point_runs_from_any_directory(tmp_path, mini_minionerec):
    cfg = write_config(tmp_path / "c.yaml", f"data_dir: {mini_minionerec.parent}\ndomains: [Mini]\n"
                                            f"output_dir: {tmp_path / 'out'}\nskip_embeddings: true\n")
    res = subprocess.run([sys.executable, "-m", "data_builders.build", "--config", str(cfg)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Mini" in res.stdout


def test_lcrec_and_raw_amazon_sources_through_the_cli(tmp_path, capsys):
    fixtures = REPO / "tests" / "fixtures"
    cfg = write_config(tmp_path / "l.yaml", f"source: lcrec\ndata_dir: {fixtures / 'lcrec'}\ndomains: [Toy]\n"
                                            f"output_dir: {tmp_path / 'l'}\nskip_embeddings: true\n")
    assert main(["--config", str(cfg)]) == 0
    assert load_rec_dataset(tmp_path / "l" / "dataset").meta["source"]["format"] == "lcrec"
    cfg = write_config(tmp_path / "a.yaml", f"source: amazon2023\ndata_dir: {fixtures / 'amazon_raw'}\n"
                                            "domains: [games]\nreviews_file: reviews_2023.jsonl\n"
                                            f"meta_file: meta_2023.jsonl\nk_core: 2\noutput_dir: {tmp_path / 'a'}\n"
                                            "skip_embeddings: true\nshow_progress: false\n")
    assert main(["--config", str(cfg)]) == 0
    ds = load_rec_dataset(tmp_path / "a" / "dataset")
    assert ds.meta["source"]["format"] == "amazon2023" and len(ds.splits["test"]) > 0
    assert "games" in capsys.readouterr().out
