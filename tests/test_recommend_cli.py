"""`python -m decoding.recommend` (decoding/cli.py): K distinct real items of the domain with titles, the same
items and scores as decoding.recommend.recommend, histories from ids / titles / a user, and one clear error line
(exit 2) for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_hybrid import scratch_pipeline

from data_builders.dataset import load_rec_dataset
from decoding.cli import main

from conftest import REPO

IND, OFF = "Industrial_and_Scientific", "Office_Products"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    dataset, _, ckpt = scratch_pipeline(tmp_path_factory.mktemp("recommend_cli"))
    return dataset, ckpt


def ask(trained, capsys, *args: str) -> tuple[int, str, str]:
    dataset, ckpt = trained
    rc = main(["--checkpoint", str(ckpt), "--dataset", str(dataset), *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def ask_json(trained, capsys, *args: str) -> dict:
    rc, out, err = ask(trained, capsys, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


def test_history_of_ids_gives_k_distinct_items_of_its_domain_as_recommend_does(trained, capsys):
    from decoding.catalogue import Catalogue
    from decoding.recommend import recommend
    from sft.modeling import load_sft_checkpoint

    dataset_dir, ckpt = trained
    got = ask_json(trained, capsys, "--history", f"{OFF}:3", f"{OFF}:7", "--k", "5")
    assert got["domain"] == OFF and got["k"] == 5
    ids = [r["item_id"] for r in got["items"]]
    assert len(set(ids)) == 5 and all(i.startswith(OFF) for i in ids)
    assert [r["rank"] for r in got["items"]] == [1, 2, 3, 4, 5]
    assert all(r["title"] == f"{OFF} item {r['item_id'].split(':')[1]}" for r in got["items"])
    scores = [r["score"] for r in got["items"]]
    assert scores == sorted(scores, reverse=True)
    model, tok, artifact = load_sft_checkpoint(ckpt)
    (direct,) = recommend(model, tok, Catalogue.from_artifact(artifact, load_rec_dataset(dataset_dir)),
                          [[f"{OFF}:3", f"{OFF}:7"]], k=5, domains=[OFF], show_progress=False)
    assert [(i, round(s, 4)) for i, s in direct] == [(r["item_id"], r["score"]) for r in got["items"]]


def test_table_output_names_the_domain_and_every_item(trained, capsys):
    rc, out, _ = ask(trained, capsys, "--history", f"{IND}:1", "--k", "3")
    lines = out.strip().splitlines()
    assert rc == 0 and lines[0].startswith(f"top 3 of {IND} after 1 items") and len(lines) == 5
    assert all(f"{IND} item" in line for line in lines[2:])


def test_titles_and_users_resolve_to_their_histories(trained, capsys):
    dataset_dir, _ = trained
    by_title = ask_json(trained, capsys, "--titles", f"  {OFF.upper()} ITEM 3 ", f"{OFF} item 7", "--k", "4")
    by_id = ask_json(trained, capsys, "--history", f"{OFF}:3", f"{OFF}:7", "--k", "4")
    assert by_title["items"] == by_id["items"]
    ds = load_rec_dataset(dataset_dir)
    rows = [r for s in ("train", "valid", "test") for r in ds.splits[s].to_list()]
    user = rows[0]["user_id"]
    newest = max((r for r in rows if r["user_id"] == user), key=lambda r: (r["timestamp"] or 0, len(r["history"])))
    got = ask_json(trained, capsys, "--user", user, "--k", "3")
    assert [h["item_id"] for h in got["history"]] == [*newest["history"], newest["target"]]
    assert got["domain"] == newest["domain"]


def test_exclude_history_leaves_the_history_out(trained, capsys):
    history = [f"{IND}:{j}" for j in range(6)]
    full = ask_json(trained, capsys, "--history", *history, "--k", "14")
    got = ask_json(trained, capsys, "--history", *history, "--k", "14", "--exclude_history")
    ids = [r["item_id"] for r in got["items"]]
    assert len(ids) == 14 and not set(ids) & set(history)
    assert set(history) & {r["item_id"] for r in full["items"]}  # without the flag some history items come back
    with pytest.raises(AssertionError):  # 20 items - 6 seen = 14 left: 15 is too many
        ask_json(trained, capsys, "--history", *history, "--k", "15", "--exclude_history")


@pytest.mark.parametrize("args, message", [
    (["--history", "nope", "--k", "3"], "--history: unknown item ids ['nope']"),
    (["--history", f"{IND}:1", "--domain", "Toys"], "--domain: 'Toys' is not a domain"),
    (["--history", f"{IND}:1", f"{OFF}:1"], "the history spans domains"),
    (["--history", f"{IND}:1", "--k", "21"], "--k: 21 is more than the 20 items"),
    (["--history", f"{IND}:1", "--k", "0"], "`--k` must be in [1, inf]"),
    (["--history", f"{IND}:1", "--k", "5", "--num_beams", "3"], "`--num_beams` must be in [5, inf]"),
    (["--titles", f"{IND} item 99"], "no item titled"),
    (["--titles", f"{IND} itm 9"], f"close titles: ['{IND} item 9'"),
    (["--user", "nobody"], "'nobody' is not a user"),
])
def test_bad_requests_end_with_one_error_line(trained, capsys, args, message):
    rc, out, err = ask(trained, capsys, *args)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: recommend: ") and message in err, err


def test_a_checkpoint_of_another_dataset_or_no_checkpoint_is_refused(trained, capsys, tmp_path):
    from test_eval import write_tiny

    other, _ = write_tiny(tmp_path, seed=1)
    _, ckpt = trained
    rc = main(["--checkpoint", str(ckpt), "--dataset", str(other), "--history", f"{IND}:1"])
    err = capsys.readouterr().err
    assert rc == 2 and "was trained on dataset" in err
    rc = main(["--checkpoint", str(tmp_path / "missing"), "--dataset", str(other), "--history", f"{IND}:1"])
    assert rc == 2 and "--checkpoint not found" in capsys.readouterr().err


def test_module_entry_point_runs(trained):
    dataset, ckpt = trained
    res = subprocess.run([sys.executable, "-m", "decoding.recommend", "--checkpoint", str(ckpt), "--dataset",
                          str(dataset), "--history", f"{IND}:2", "--k", "2", "--json"], cwd=REPO,
                         capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["items"]) == 2
