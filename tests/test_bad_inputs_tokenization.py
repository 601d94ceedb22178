"""`python -m tokenization.build` on bad input: one `error:` line, exit 2, nothing written (issue #11); and the SID
artifact refuses files that changed after it was written (item 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_builders.dataset import DataError
from tokenization.artifact import load_sid_artifact
from tokenization.build import build, main
from tests.test_tokenization_build import TINY_CONFIG, make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("tiny_tok_bad"), n=120)


def args_for(tiny, out: Path) -> list[str]:
    dataset, emb = tiny
    return ["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(emb),
            "--output_dir", str(out)]


def copy_with(tiny, tmp_path: Path, which: int, name: str, content: bytes | None) -> Path:
    dst = tmp_path / f"copy{which}"
    shutil.copytree(tiny[which], dst)
    if content is None:
        (dst / name).unlink()
    else:
        (dst / name).write_bytes(content)
    return dst


def truncated_npy(tiny) -> bytes:
    return (tiny[1] / "embeddings.npy").read_bytes()[:300]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


CASES = [
    ("unknown_method", ["--method", "vqvae"], "`method`: 'vqvae' is not one of"),
    ("unknown_collision", ["--collision", "drop"], "`collision`: 'drop' is not one of"),
    ("collision_extend_colliding", ["--collision", "extend_colliding"],
     "`collision`: 'extend_colliding' is not offered: extending only the colliding items would give SIDs of mixed"),
    ("unknown_vocab_init", ["--vocab_init", "zeros"], "`vocab_init`: 'zeros' is not one of"),
    ("codebook_negative", ["--codebook_size", "-4"], "`codebook_size` must be in [2, 65536], got -4"),
    ("codebook_huge", ["--codebook_size", "1000000"], "`codebook_size` must be in [2, 65536]"),
    ("levels_huge", ["--levels", "1000000"], "`levels` must be in [1, 8], got 1000000"),
    ("levels_zero", ["--levels", "0"], "`levels` must be in [1, 8]"),
    ("kmeans_iters_zero", ["--kmeans_iters", "0"], "`kmeans_iters` must be in [1, 10000], got 0"),
    ("sample_negative", ["--sample_size", "-1"], "`sample_size` must be in [0, inf]"),
    ("seed_overflow", ["--seed", str(2**33)], "`seed` must be in [0, 4294967295]"),
    ("seed_negative", ["--seed", "-1"], "`seed` must be in [0, 4294967295]"),
    ("sinkhorn_eps_zero", ["--method", "balanced_rq_kmeans", "--sinkhorn_eps", "0"], "`sinkhorn_eps` must be in (0"),
    ("fsq_levels_one", ["--method", "fsq", "--fsq_levels", "1", "4"], "fsq_levels: every entry must be in [2, 1024]"),
    ("fsq_group_not_dividing", ["--method", "fsq", "--fsq_group_size", "4"], "4 must divide len(fsq_levels) = 6"),
    ("fsq_lr_negative", ["--method", "fsq", "--fsq_lr=-1e-3"], "`fsq_lr` must be in (0, inf]"),
    ("no_embeddings", ["--embeddings", ""], "method=rq_kmeans needs embeddings"),
    ("external_without_index", ["--method", "external"], "method=external needs one or more index.json"),
    ("external_index_missing", ["--method", "external", "--external_index", "/nonexistent/index.json"],
     "/nonexistent/index.json: external index not found"),
    ("external_index_bad_json", lambda t, p: ["--method", "external", "--external_index",
                                              str(write(p / "index.json", '{"1": ["<a_1>",'))],
     "index.json, line 1: external index is not valid JSON"),
    ("external_index_mixed_lengths", lambda t, p: ["--method", "external", "--external_index", str(write(
        p / "i.json", '{"Toys:0": ["<a_1>", "<b_2>"], "Office:1": ["<a_1>", "<b_2>", "<c_0>"]}'))],
     "i.json, key 'Office:1': 3 levels, but the first item has 2; every SID must have the same number of levels"),
    ("prefix_count", lambda t, p: ["--method", "external", "--external_index", str(write(p / "i.json", "{}")),
                                   "--external_id_prefixes", "a:", "b:"], "2 prefixes for 1 external_index files"),
    ("missing_dataset", ["--dataset", "/nonexistent/ds"], "/nonexistent/ds: dataset not found"),
    ("missing_embeddings", ["--embeddings", "/nonexistent/emb"], "/nonexistent/emb: embeddings not found"),
    ("embeddings_dir_without_meta", lambda t, p: ["--embeddings", str(copy_with(t, p, 1, "meta.json", None))],
     "not a embeddings: no meta.json inside"),
    ("truncated_embeddings", lambda t, p: ["--embeddings", str(copy_with(t, p, 1, "embeddings.npy", truncated_npy(t)))],
     "embeddings.npy"),
    ("corrupt_embeddings_meta", lambda t, p: ["--embeddings", str(copy_with(t, p, 1, "meta.json", b"{oops"))],
     "meta.json"),
    ("unknown_key", lambda t, p: ["--config", str(write(p / "c.yaml", TINY_CONFIG.read_text() + "codebok_size: 8\n"))],
     "unknown config key(s): codebok_size (did you mean codebook_size?)"),
    ("list_for_int", lambda t, p: ["--config", str(write(p / "c.yaml", TINY_CONFIG.read_text() + "levels: [3]\n"))],
     "`levels` must be int, got [3]"),
    ("string_for_int", ["--levels", "three"], "invalid int value: 'three'"),
    ("output_is_a_file", lambda t, p: ["--output_dir", str(write(p / "out_file", "precious"))], "is an existing file"),
]


@pytest.mark.parametrize("case_id, extra, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny, tmp_path, capsys, case_id, extra, message):
    out = tmp_path / "sids"
    extra = extra(tiny, tmp_path) if callable(extra) else extra
    args = args_for(tiny, out) + extra
    if extra[:1] == ["--config"]:
        args = args[2:]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case_id == "output_is_a_file":
        assert (tmp_path / "out_file").read_text() == "precious"


def test_enough_cases():
    assert len(CASES) >= 25


@pytest.fixture(scope="module")
def artifact(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "sids"
    build(args_for(tiny, out))
    return out


@pytest.mark.parametrize("name", ["item_ids.json", "codes.npy", "index.json"])
def test_a_changed_file_is_refused_naming_it(artifact, tmp_path, name):
    """Item 4: swapping two ids in item_ids.json used to train and evaluate silently."""
    copy = tmp_path / "sids"
    shutil.copytree(artifact, copy)
    load_sid_artifact(copy)  # intact: loads
    if name == "item_ids.json":
        ids = json.loads((copy / name).read_text())
        ids[0], ids[1] = ids[1], ids[0]
        (copy / name).write_text(json.dumps(ids))
    elif name == "codes.npy":
        codes = np.load(copy / name)
        codes[[0, 1]] = codes[[1, 0]]
        np.save(copy / name, codes)
    else:
        (copy / name).write_text((copy / name).read_text().replace("<a_", "<A_", 1))
    with pytest.raises(DataError, match=f"{name}: content changed since the SID artifact was written"):
        load_sid_artifact(copy)


def test_a_missing_listed_file_is_refused(artifact, tmp_path):
    copy = tmp_path / "sids"
    shutil.copytree(artifact, copy)
    (copy / "codes.npy").unlink()
    with pytest.raises(DataError, match="codes.npy: missing"):
        load_sid_artifact(copy)
