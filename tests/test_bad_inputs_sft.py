"""`sft/train.py` on bad input: one `error:` line naming the problem, exit 2, nothing written, before any model
loads (issue #11)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import REPO
from sft.train import main
from sft_fixtures import make_tiny_pipeline
from tokenization.artifact import write_sid_artifact

CONFIG = REPO / "configs" / "tiny" / "sft.yaml"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("sft_bad"))


def write(path, text):
    path.write_text(text)
    return path


def sid_copy(pipeline, tmp_path, edit):
    dst = tmp_path / "sids_copy"
    shutil.copytree(pipeline[1], dst)
    edit(dst)
    return dst


def other_artifact(tmp_path):
    """A valid SID artifact of items the dataset does not have."""
    ids = [f"Other:{i}" for i in range(6)]
    write_sid_artifact(tmp_path / "other_sids", ids, np.array([[k // 3, k % 3] for k in range(6)]),
                       {"codebook_sizes": [2, 3]})
    return tmp_path / "other_sids"


def fake_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    return ckpt


def swap_codes(d):
    codes = np.load(d / "codes.npy")
    codes[[0, 1]] = codes[[1, 0]]
    np.save(d / "codes.npy", codes)


C = lambda *a: list(a)  # noqa: E731
CASES = [
    ("unknown_key", lambda p, t: ["--config", str(write(t / "c.yaml", CONFIG.read_text() + "lora_rnak: 8\n"))],
     "unknown config key(s): lora_rnak"),
    ("list_for_int", lambda p, t: ["--config", str(write(t / "c.yaml", CONFIG.read_text() + "history_len: [3]\n"))],
     "`history_len` must be int, got [3]"),
    ("config_missing", lambda p, t: ["--config", str(t / "none.yaml")], "config file not found"),
    ("bad_mode", C("--mode", "lora4"), "mode='lora4'"),
    ("use_peft", C("--use_peft", "true"), "set `mode: lora | qlora`"),
    ("history_len_negative", C("--history_len", "-3"), "`history_len` must be in [1, inf], got -3"),
    ("history_len_zero", C("--history_len", "0"), "`history_len` must be in [1, inf], got 0"),
    ("val_k_too_large", C("--val_k", "50"), "val_k: 50 is larger than domain 'Mini' (6 items)"),
    ("val_beams_below_k", C("--val_beams", "2"), "`val_beams` must be in [5, inf]"),
    ("new_tokens_frozen_rows", C("--mode", "new_tokens", "--train_sid_rows", "false"),
     "train_sid_rows: false with mode: new_tokens"),
    ("full_frozen_rows", C("--mode", "full", "--train_sid_rows", "false"), "train_sid_rows: false with mode: full"),
    ("bad_sid_init", C("--sid_init", "zeros"), "sid_init='zeros'"),
    ("scratch_with_lora", C("--model_name_or_path", "scratch"), "use `mode: full`"),
    ("scratch_dropout", C("--model_name_or_path", "scratch", "--mode", "full", "--weight_title2sid", "0",
                          "--scratch_dropout", "1.5"), "`scratch_dropout` must be in [0, 1)"),
    ("scratch_heads", C("--model_name_or_path", "scratch", "--mode", "full", "--weight_title2sid", "0",
                        "--scratch_hidden_size", "30"), "30 is not divisible by scratch_heads=4"),
    ("dropout_on_llm", C("--scratch_dropout", "0.2"), "apply to model_name_or_path: scratch only"),
    ("test_in_train", C("--train_splits", "train", "test"), "train_splits contains `test`"),
    ("unknown_split", C("--train_splits", "trian"), "`train_splits`: 'trian' is not one of"),
    ("batch_size_zero", C("--per_device_train_batch_size", "0"), "`per_device_train_batch_size` must be in [1"),
    ("lr_zero", C("--learning_rate", "0"), "`learning_rate` must be in (0, inf]"),
    ("max_steps_zero", C("--max_steps", "0"), "max_steps: 0 trains nothing"),
    ("seed_overflow", C("--seed", str(2**40)), "`seed` must be in [0, 4294967295]"),
    ("budget_negative", C("--time_budget_minutes", "-1"), "`time_budget_minutes` must be in (0, inf]"),
    ("unknown_domain", C("--domains", "Nope"), "domains: ['Nope'] not in the dataset"),
    ("missing_local_model", C("--model_name_or_path", "/nonexistent/model"), "/nonexistent/model: model_name_or_path"),
    ("missing_dataset", C("--dataset_dir", "/nonexistent/ds"), "/nonexistent/ds: dataset_dir not found"),
    ("missing_sids", C("--sid_dir", "/nonexistent/sids"), "/nonexistent/sids: sid_dir not found"),
    ("corrupt_sid_meta", lambda p, t: ["--sid_dir", str(sid_copy(p, t, lambda d: (d / "meta.json").write_text("{x")))],
     "meta.json, line 1: a SID artifact's meta.json is not valid JSON"),
    ("changed_sid_codes", lambda p, t: ["--sid_dir", str(sid_copy(p, t, swap_codes))],
     "codes.npy: content changed since the SID artifact was written"),
    ("sids_of_other_data", lambda p, t: ["--sid_dir", str(other_artifact(t))], "it was built for other data"),
    ("missing_text_embeddings", C("--model_name_or_path", "scratch", "--mode", "full", "--weight_title2sid", "0",
                                  "--item_text_embeddings", "/nonexistent/emb"), "item_text_embeddings not found"),
    ("resume_missing", C("--resume_from_checkpoint", "/nonexistent/ckpt"), "resume_from_checkpoint not found"),
    ("resume_without_optimizer", lambda p, t: ["--resume_from_checkpoint", str(fake_checkpoint(t))],
     "has no optimizer.pt"),
    ("output_is_a_file", lambda p, t: ["--output_dir", str(write(t / "out_file", "precious"))], "is an existing file"),
]


@pytest.mark.parametrize("case_id, extra, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(pipeline, tmp_path, capsys, monkeypatch, case_id, extra,
                                                         message):
    import sft.train

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(sft.train, "load_base", no_model)
    monkeypatch.setattr(sft.train, "build_scratch_lm", no_model)
    out = tmp_path / "out"
    extra = extra(pipeline, tmp_path) if callable(extra) else extra
    args = ["--config", str(CONFIG), "--dataset_dir", str(pipeline[0]), "--sid_dir", str(pipeline[1]),
            "--output_dir", str(out), *extra]
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
    assert len(CASES) >= 30
