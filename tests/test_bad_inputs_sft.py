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


def truncate_codes(d):
    data = (d / "codes.npy").read_bytes()
    (d / "codes.npy").write_bytes(data[: len(data) // 2])


def dataset_copy(pipeline, tmp_path, edit):
    dst = tmp_path / "dataset_copy"
    shutil.copytree(pipeline[0], dst)
    edit(dst)
    return dst


def partial_artifact(pipeline, tmp_path):
    """SIDs for 5 of the dataset's 6 items."""
    ids = json.loads((pipeline[1] / "item_ids.json").read_text())[:5]
    write_sid_artifact(tmp_path / "partial_sids", ids, np.array([[k // 3, k % 3] for k in range(5)]),
                       {"codebook_sizes": [2, 3]})
    return tmp_path / "partial_sids"


def artifact_of_another_dataset(pipeline, tmp_path):
    """The same items, but the artifact records that it was built from another dataset."""
    ids = json.loads((pipeline[1] / "item_ids.json").read_text())
    write_sid_artifact(tmp_path / "foreign_sids", ids, np.array([[k // 3, k % 3] for k in range(6)]),
                       {"codebook_sizes": [2, 3], "inputs": {"dataset_hash": "0" * 64}})
    return tmp_path / "foreign_sids"


def embeddings_dir(pipeline, tmp_path, dataset_hash=None, n_items=6, meta_text=None):
    """An item-text embeddings directory for the tiny dataset (of another dataset with ``dataset_hash``)."""
    from data_builders.dataset import load_rec_dataset

    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "embeddings.npy", np.zeros((n_items, 4), dtype=np.float32))
    meta = {"format": "genrec-embeddings/1", "n_items": 6, "dim": 4,
            "dataset_hash": dataset_hash or load_rec_dataset(pipeline[0]).dataset_hash}
    (d / "meta.json").write_text(meta_text if meta_text is not None else json.dumps(meta))
    return d


C = lambda *a: list(a)  # noqa: E731
SCRATCH = ("--model_name_or_path", "scratch", "--mode", "full", "--weight_title2sid", "0")
CASES = [
    ("unknown_key", lambda p, t: ["--config", str(write(t / "c.yaml", CONFIG.read_text() + "lora_rnak: 8\n"))],
     "unknown config key(s): lora_rnak"),
    ("list_for_int", lambda p, t: ["--config", str(write(t / "c.yaml", CONFIG.read_text() + "history_len: [3]\n"))],
     "`history_len` must be int, got [3]"),
    ("str_for_list", lambda p, t: ["--config", str(write(t / "c.yaml", CONFIG.read_text() + "train_splits: train\n"))],
     "`train_splits` must be list[str], got 'train' (a str, not a list: write [train] in YAML)"),
    ("ints_for_list_of_str", lambda p, t: ["--config", str(write(t / "c.yaml",
                                                                 CONFIG.read_text() + "train_splits: [1, 2]\n"))],
     "`train_splits` must be list[str], got [1, 2] (item 0, 1, is int, not str)"),
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
    ("corrupt_text_embeddings_meta", lambda p, t: [*SCRATCH, "--item_text_embeddings",
                                                   str(embeddings_dir(p, t, meta_text="{x"))],
     "emb/meta.json, line 1"),
    ("text_embeddings_of_another_dataset", lambda p, t: [*SCRATCH, "--item_text_embeddings",
                                                         str(embeddings_dir(p, t, dataset_hash="0" * 64))],
     "embeddings were built from dataset 000000000000"),
    ("text_embeddings_wrong_shape", lambda p, t: [*SCRATCH, "--item_text_embeddings",
                                                  str(embeddings_dir(p, t, n_items=5))],
     "embeddings.npy: shape (5, 4) does not match meta (6, 4)"),
    ("resume_missing", C("--resume_from_checkpoint", "/nonexistent/ckpt"), "resume_from_checkpoint not found"),
    ("resume_without_optimizer", lambda p, t: ["--resume_from_checkpoint", str(fake_checkpoint(t))],
     "has no optimizer.pt"),
    ("output_is_a_file", lambda p, t: ["--output_dir", str(write(t / "out_file", "precious"))], "is an existing file"),
    ("output_parent_is_a_file", lambda p, t: ["--output_dir", str(write(t / "parent_file", "x") / "out")],
     "output directory's parent is a file"),
    ("config_not_a_mapping", lambda p, t: ["--config", str(write(t / "c.yaml", "- a\n- b\n"))],
     "must contain a YAML mapping"),
    ("bool_as_word", C("--train_sid_rows", "maybe"), "--train_sid_rows"),
    ("max_steps_negative", C("--max_steps", "-5"), "max_steps: -5: -1 = by num_train_epochs"),
    ("lora_r_zero", C("--lora_r", "0"), "`lora_r` must be in [1, inf], got 0"),
    ("lora_alpha_negative", C("--lora_alpha", "-1"), "`lora_alpha` must be in (0, inf], got -1"),
    ("lora_dropout_one", C("--lora_dropout", "1.0"), "`lora_dropout` must be in [0, 1), got 1.0"),
    ("max_length_zero", C("--max_length", "0"), "`max_length` must be in [1, inf], got 0"),
    ("eval_batch_size_zero", C("--per_device_eval_batch_size", "0"), "`per_device_eval_batch_size` must be in [1"),
    ("weight_decay_negative", C("--weight_decay", "-0.1"), "`weight_decay` must be in [0, inf], got -0.1"),
    ("workers_negative", C("--dataloader_num_workers", "-1"), "`dataloader_num_workers` must be in [0, inf]"),
    ("unknown_metric", C("--metric_for_best_model", "ndcg@50"), "metric_for_best_model: 'ndcg@50' is not an"),
    ("metric_without_validation", C("--metric_for_best_model", "ndcg@10", "--val_rec_rows", "0"),
     "hr@K / ndcg@K need val_rec_rows > 0"),
    ("qlora_on_tiny", C("--mode", "qlora"), "mode: qlora loads a checkpoint from disk in 4-bit"),
    ("unknown_embedded_model", C("--model_name_or_path", "embedded:gpt5"), "unknown embedded model 'embedded:gpt5'"),
    ("scratch_qwen2_dropout", C("--model_name_or_path", "scratch:qwen2", "--mode", "full", "--weight_title2sid", "0",
                                "--scratch_dropout", "0.1"), "are built on llama"),
    ("centroids_without_codebooks", C(*SCRATCH, "--sid_init", "centroids"), "sid_init: centroids needs RQ codebooks"),
    ("no_task_weight", C("--weight_seq_sid", "0", "--weight_title2sid", "0"), "is 0: no training examples"),
    ("unknown_domain_no_validation", C("--domains", "Nope", "--val_rec_rows", "0"), "domains: ['Nope'] not in"),
    ("corrupt_dataset_meta", lambda p, t: ["--dataset_dir", str(dataset_copy(p, t, lambda d: write(d / "meta.json",
                                                                                                  "{x")))],
     "dataset_copy/meta.json, line 1: a dataset directory's meta.json is not valid JSON"),
    ("dataset_without_meta", lambda p, t: ["--dataset_dir", str(dataset_copy(p, t,
                                                                              lambda d: (d / "meta.json").unlink()))],
     "not a dataset_dir: no meta.json inside"),
    ("truncated_sid_codes", lambda p, t: ["--sid_dir", str(sid_copy(p, t, truncate_codes))],
     "sids_copy/codes.npy: content changed"),
    ("sids_for_part_of_the_items", lambda p, t: ["--sid_dir", str(partial_artifact(p, t))],
     "1 items of the dataset (domains ['Mini']) have no SID"),
    ("sids_built_from_another_dataset", lambda p, t: ["--sid_dir", str(artifact_of_another_dataset(p, t))],
     "SID artifact built from dataset 000000000000, but dataset_dir"),
    ("resume_not_a_checkpoint", lambda p, t: ["--resume_from_checkpoint", str((t / "empty_ckpt").mkdir() or
                                                                             t / "empty_ckpt")],
     "not a Trainer checkpoint (no trainer_state.json)"),
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
    assert len(CASES) >= 55


# ------------------------------------------------------------------------------------------------- python -m sft.merge


def fake_sft_checkpoint(pipeline, tmp_path, mode="lora"):
    """A checkpoint directory with a valid genrec_sft.json but no adapter files."""
    from sft.modeling import sid_artifact_hash
    from tokenization.artifact import load_sid_artifact

    ckpt = tmp_path / f"ckpt_{mode}"
    ckpt.mkdir()
    meta = {"mode": mode, "model": "tiny", "num_layers": None, "sid_dir": str(pipeline[1]),
            "sid_hash": sid_artifact_hash(load_sid_artifact(pipeline[1]))}
    (ckpt / "genrec_sft.json").write_text(json.dumps(meta))
    return ckpt


MERGE_CASES = [
    ("missing_checkpoint", lambda p, t: ["--checkpoint", str(t / "nowhere")], "SFT checkpoint not found"),
    ("not_an_sft_checkpoint", lambda p, t: ["--checkpoint", str(t)], "not a SFT checkpoint: no genrec_sft.json"),
    ("qlora_checkpoint", lambda p, t: ["--checkpoint", str(fake_sft_checkpoint(p, t, "qlora"))],
     "a qlora checkpoint cannot be merged"),
    ("adapter_missing", lambda p, t: ["--checkpoint", str(fake_sft_checkpoint(p, t))],
     "a lora checkpoint without its adapter (adapter_config.json missing)"),
    ("output_is_a_file", lambda p, t: ["--checkpoint", str(fake_sft_checkpoint(p, t)),
                                       "--output_dir", str(write(t / "out_file", "precious"))],
     "merge output_dir is an existing file"),
    ("output_is_the_checkpoint", lambda p, t: ["--checkpoint", str(c := fake_sft_checkpoint(p, t)),
                                               "--output_dir", str(c)], "merge output_dir is the checkpoint itself"),
    ("output_dir_missing", lambda p, t: ["--checkpoint", str(t)], "the following arguments are required: "
                                                                   "--output_dir"),
]


@pytest.mark.parametrize("case_id, extra, message", MERGE_CASES, ids=[c[0] for c in MERGE_CASES])
def test_merge_bad_input_is_one_line_exit_2_and_writes_nothing(pipeline, tmp_path, capsys, case_id, extra, message):
    from sft import merge

    out = tmp_path / "merged"
    args = extra(pipeline, tmp_path)
    if "--output_dir" not in args and case_id != "output_dir_missing":
        args += ["--output_dir", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert merge.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
