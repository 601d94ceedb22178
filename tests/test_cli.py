"""The shared CLI error path (data_builders/cli.py): user errors -> one line + exit 2, bugs keep their traceback."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest

from data_builders import cli


@dataclass
class Args:
    batch_size: int = 8
    lr: float = 1e-3
    name: str = "x"
    ks: list[int] = field(default_factory=lambda: [5, 10])
    budget: float | None = None
    flag: bool = False
    splits: list[str] = field(default_factory=lambda: ["train"])
    domains: list[str] | None = None


def parse(tmp_path, text: str, *flags: str) -> Args:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text, encoding="utf-8")
    (args,) = cli.parse_config((Args,), ["--config", str(cfg), *flags])
    return args


def test_valid_config_and_flag_override(tmp_path):
    args = parse(tmp_path, "batch_size: 4\nlr: 1\nks: [1, 3]\n", "--name", "y")
    assert (args.batch_size, args.lr, args.ks, args.name) == (4, 1, [1, 3], "y")


@pytest.mark.parametrize("text, message", [
    ("batch_size: [1]\n", "`batch_size` must be int, got [1]"),
    ("lr: fast\n", "lr"),
    ("ks: [1, two]\n", "`ks` must be list[int], got [1, 'two'] (item 1, 'two', is str, not int)"),
    ("budget: [3]\n", "`budget` must be float | None, got [3] (list)"),
    # a list-of-str field used to say "must be list, got [1, 2]" (the generic alias's __name__ is plain "list")
    ("splits: train\n", "`splits` must be list[str], got 'train' (a str, not a list: write [train] in YAML)"),
    ("splits: [1, 2]\n", "`splits` must be list[str], got [1, 2] (item 0, 1, is int, not str)"),
    ("splits: {train: 1}\n", "`splits` must be list[str], got {'train': 1} (dict)"),
    ("domains: [Toys, 3]\n", "`domains` must be list[str] | None, got ['Toys', 3] (item 1, 3, is int, not str)"),
    ("batch_sise: 4\n", "unknown config key(s): batch_sise (did you mean batch_size?)"),
    ("- a\n- b\n", "must contain a YAML mapping"),
    ("batch_size: :\n  - [", "line 1: invalid YAML"),
])
def test_bad_config_is_a_user_error_naming_the_file(tmp_path, text, message):
    with pytest.raises(cli.UserError) as e:
        parse(tmp_path, text)
    assert message in str(e.value)
    assert "c.yaml" in str(e.value)


def test_missing_and_non_utf8_config(tmp_path):
    with pytest.raises(cli.UserError, match="config file not found"):
        cli.parse_config((Args,), ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "b.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(cli.UserError, match="not UTF-8"):
        cli.parse_config((Args,), ["--config", str(bad)])


def test_run_cli_turns_user_errors_into_one_line_and_exit_2(capsys):
    def bad(argv):
        raise cli.user_error("cfg.yaml", "`batch_size` must be >= 1, got 0")

    assert cli.run_cli(bad, []) == 2
    err = capsys.readouterr().err
    assert err == "error: cfg.yaml: `batch_size` must be >= 1, got 0\n"

    def missing(argv):
        open("/nonexistent/dir/file.json")

    assert cli.run_cli(missing, []) == 2
    assert "/nonexistent/dir/file.json: No such file or directory" in capsys.readouterr().err


def test_run_cli_keeps_the_traceback_of_a_real_bug():
    def bug(argv):
        return {}["missing"]

    with pytest.raises(KeyError):
        cli.run_cli(bug, [])


def test_check_range_and_choice_messages():
    cli.check_range("lr", 0.5, 0, 1, lo_open=True)
    with pytest.raises(cli.UserError, match=r"`lr` must be in \(0, 1\], got 0"):
        cli.check_range("lr", 0, 0, 1, lo_open=True)
    with pytest.raises(cli.UserError, match=r"`seed` must be in \[0, 4294967295\]"):
        cli.check_seed("seed", 2**40)
    with pytest.raises(cli.UserError, match="'adam' is not one of 'sgd', 'adamw'"):
        cli.check_choice("optim", "adam", ("sgd", "adamw"))


def test_read_json_and_npy_name_the_file(tmp_path):
    j = tmp_path / "meta.json"
    j.write_text('{"a": 1,\n "b": }', encoding="utf-8")
    with pytest.raises(cli.UserError, match=r"meta.json, line 2: artifact meta is not valid JSON"):
        cli.read_json_file(j, "artifact meta")
    n = tmp_path / "x.npy"
    np.save(n, np.arange(1000, dtype=np.float32))
    n.write_bytes(n.read_bytes()[:200])
    with pytest.raises(cli.UserError, match=r"x.npy: codes is truncated"):
        cli.load_npy(n, "codes")


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "out"
    f.write_text("precious")
    with pytest.raises(cli.UserError, match="is an existing file"):
        cli.check_output_dir(f)
    assert f.read_text() == "precious"


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    final = tmp_path / "dataset"
    dead = tmp_path / f".dataset.tmp-{2**22 + 12345}"   # above Linux's pid_max default: never a live process
    alive = tmp_path / f".dataset.tmp-{os.getppid()}"
    other = tmp_path / f".sids.tmp-{2**22 + 12345}"      # another artifact's temp: not ours to remove
    for d in (dead, alive, other):
        d.mkdir()
        (d / "f").write_text("x")
    removed = cli.clean_stale_temps(final)
    assert removed == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
