"""`python -m data_builders.build` on bad input: one `error:` line, exit 2, nothing written (issue #11 items 6, 7)."""

from __future__ import annotations

import gzip
import os

import pytest

from conftest import write_minionerec
from data_builders.build import main


def src(tmp_path, **kw):
    return write_minionerec(tmp_path / "src" / "Mini", **kw)


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def corrupt(tmp_path, name, data):
    folder = src(tmp_path)
    write(folder / name, data)
    return folder.parent


def truncated_gz(tmp_path, data: bytes | None = None):
    from conftest import MINI_HEADER, MINI_TEST

    folder = src(tmp_path)
    (folder / "Mini.test.csv").unlink()
    text = ("\n".join([MINI_HEADER] + MINI_TEST * 2000) + "\n").encode()
    write(folder / "Mini.test.csv.gz", data if data is not None else gzip.compress(text)[:-50])
    return folder.parent


CASES = [
    # (id, make extra args from tmp_path, expected message)
    ("k_core_negative", lambda t: ["--k_core", "-3"], "`k_core` must be in [1, inf], got -3"),
    ("max_history_zero", lambda t: ["--max_history", "0"], "`max_history` must be in [1, inf], got 0"),
    ("max_history_negative", lambda t: ["--max_history", "-3"], "`max_history` must be in [1, inf], got -3"),
    ("embed_batch_zero", lambda t: ["--embed_batch_size", "0"], "`embed_batch_size` must be in [1, inf]"),
    ("text_tokens_zero", lambda t: ["--text_max_tokens", "0"], "`text_max_tokens` must be in [1, inf]"),
    ("unknown_source", lambda t: ["--source", "movielens"], "`source`: 'movielens' is not one of"),
    ("unknown_split", lambda t: ["--split", "random"], "`split`: 'random' is not one of"),
    ("empty_domains", lambda t: ["--config", str(write(t / "c.yaml", "domains: []\n"))], "domains: is empty"),
    ("duplicate_domains", lambda t: ["--domains", "Mini", "Mini"], "domains: has duplicates"),
    ("bad_date", lambda t: ["--source", "amazon2018", "--start", "yesterday"],
     "start='yesterday': expected an ISO date"),
    ("empty_window", lambda t: ["--source", "amazon2018", "--start", "2020-01-01", "--end", "2019-01-01"],
     "start: '2020-01-01' is not before end='2019-01-01'"),
    ("missing_data_dir", lambda t: ["--data_dir", "/nonexistent/data"], "/nonexistent/data: data_dir not found"),
    ("missing_domain", lambda t: ["--domains", "Nope"], "Nope"),
    ("missing_encoder", lambda t: ["--skip_embeddings", "false", "--encoder", "/nonexistent/encoder"],
     "encoder '/nonexistent/encoder': not a known embedded encoder"),
    ("corrupt_items_json", lambda t: ["--data_dir", str(corrupt(t, "Mini.item.json", '{"1": {"title": '))],
     "Mini.item.json"),
    ("non_utf8_csv", lambda t: ["--data_dir", str(corrupt(t, "Mini.test.csv", b"user_id,history_item_id\n\xff\xfe"))],
     "Mini.test.csv"),
    ("truncated_gzip", lambda t: ["--data_dir", str(truncated_gz(t))], "truncated or corrupt gzip file (Compressed file ended"),
    ("not_gzip", lambda t: ["--data_dir", str(truncated_gz(t, b"plain text, not gzip"))], "corrupt gzip file"),
    ("unknown_item_in_test", lambda t: ["--data_dir", str(corrupt(
        t, "Mini.test.csv", "user_id,history_item_id,item_id\nA,\"[1]\",77\n"))], "unknown item id '77'"),
    ("unknown_key", lambda t: ["--config", str(write(t / "c.yaml", "max_histroy: 5\n"))],
     "unknown config key(s): max_histroy (did you mean max_history?)"),
    ("list_for_int", lambda t: ["--config", str(write(t / "c.yaml", "k_core: [5]\n"))], "`k_core` must be int"),
    ("string_for_bool", lambda t: ["--skip_embeddings", "maybe"], "skip_embeddings"),
    ("output_is_a_file", lambda t: ["--output_dir", str(write(t / "out_file", "precious"))],
     "output's parent is a file"),
    ("dataset_path_is_a_file", lambda t: ["--output_dir", str(t / "o2")] if write(t / "o2" / "dataset", "x") else [],
     "dataset output is an existing file; refusing to replace it"),
]


@pytest.mark.parametrize("case_id, extra, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case_id, extra, message):
    folder = src(tmp_path) if not (tmp_path / "src" / "Mini").exists() else tmp_path / "src" / "Mini"
    out = tmp_path / "out"
    extra = extra(tmp_path)
    domains = [] if "--domains" in extra or case_id == "empty_domains" else ["--domains", "Mini"]
    data_dir = [] if "--data_dir" in extra else ["--data_dir", str(folder.parent)]
    skip = [] if "--skip_embeddings" in extra else ["--skip_embeddings", "true"]
    args = [*data_dir, *domains, "--output_dir", str(out), *skip, "--show_progress", "false", *extra]
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in err, err
    assert not out.exists()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_enough_cases():
    assert len(CASES) >= 20


def test_missing_encoder_leaves_no_dataset(tmp_path, capsys):
    """Item 7: the encoder error used to come after dataset/ was written."""
    folder = src(tmp_path)
    assert main(["--data_dir", str(folder.parent), "--domains", "Mini", "--output_dir", str(tmp_path / "out"),
                 "--encoder", str(tmp_path / "no_encoder"), "--show_progress", "false"]) == 2
    assert "not a known embedded encoder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_stale_temp_dirs_of_killed_builds_are_cleaned_live_ones_kept(tmp_path):
    """Item 7: killed builds left .dataset.tmp-<pid> directories that no later run removed."""
    folder = src(tmp_path)
    out = tmp_path / "out"
    dead = out / f".dataset.tmp-{2**22 + 4242}"
    alive = out / f".dataset.tmp-{os.getppid()}"
    for d in (dead, alive):
        write(d / "meta.json", "{}")
    assert main(["--data_dir", str(folder.parent), "--domains", "Mini", "--output_dir", str(out),
                 "--skip_embeddings", "true", "--show_progress", "false"]) == 0
    assert (out / "dataset" / "meta.json").is_file()
    assert not dead.exists() and alive.exists()
