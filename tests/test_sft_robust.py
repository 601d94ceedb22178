"""Issue #11 items 1, 2, 5, 8 and the SFT small items: a reloaded checkpoint gives the trained model's logits in
every mode/flag combination (or the combination is refused), resume without optimizer state is refused, the log is
rewritten from the checkpoint's step, adapters are read locally, loss only on the completion, the budget bar."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import REPO
from data_builders.cli import UserError
from data_builders.dataset import DataError
from sft.modeling import SID_ROWS_FILE, load_sft_checkpoint
from sft.train import run_sft
from sft_fixtures import make_tiny_pipeline

CONFIG = str(REPO / "configs" / "tiny" / "sft.yaml")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("sft_robust"))


def run(pipeline, out, *extra):
    dataset_dir, sid_dir = pipeline
    return run_sft(["--config", CONFIG, "--dataset_dir", str(dataset_dir), "--sid_dir", str(sid_dir),
                    "--output_dir", str(out), *extra])


PROBE = "<a_0><b_1><a_1><b_2><a_0>"


@pytest.fixture(scope="module")
def bases(pipeline, tmp_path_factory):
    """Bases on disk: the tiny Llama (tied head), an untied copy, and a merged SFT model that already has the SID
    rows (the shared base of domain adapters)."""
    from sft.modeling import merge_checkpoint
    from sft.models import build_tiny_lm

    root = tmp_path_factory.mktemp("bases")
    model, tok = build_tiny_lm()
    model.save_pretrained(root / "tied")
    tok.save_pretrained(root / "tied")
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() + 0.01)
    model.save_pretrained(root / "untied")
    tok.save_pretrained(root / "untied")
    run(pipeline, root / "first", "--max_steps", "2")
    merge_checkpoint(root / "first", root / "merged")
    return {"tiny": "tiny", "tied": str(root / "tied"), "untied": str(root / "untied"),
            "merged": str(root / "merged")}


COMBINATIONS = [(base, mode, rows) for base in ("tiny", "untied", "merged")
                for mode, rows in (("lora", "true"), ("lora", "false"), ("full", "true"), ("new_tokens", "true"))]
COMBINATIONS += [(base, "qlora", rows) for base in ("tied", "untied", "merged") for rows in ("true", "false")]


@pytest.mark.parametrize("base, mode, train_sid_rows", COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def test_reload_gives_the_trained_logits(pipeline, bases, tmp_path, base, mode, train_sid_rows):
    """Item 1: LoRA with frozen SID rows on a base without them reloaded every SID row as the vocabulary mean (max
    logit difference .458); a QLoRA model trained on CPU could not run outside the trainer (bf16 trainable rows in an
    fp32 model). Every mode x train_sid_rows x base (tied / untied head, with / without SID rows) that training
    accepts reloads to the trained model's logits (new_tokens / full + frozen rows are refused: item 2)."""
    trainer = run(pipeline, tmp_path / "m", "--model_name_or_path", bases[base], "--mode", mode,
                  "--train_sid_rows", train_sid_rows)
    trained = trainer.model.eval()
    model, tok, _ = load_sft_checkpoint(tmp_path / "m")
    ids = tok(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        diff = (trained(ids).logits - model(ids).logits).abs().max().item()
    assert diff < 1e-5, f"{base}/{mode}/train_sid_rows={train_sid_rows}: max logit difference {diff}"


def test_merge_cli_gives_the_lora_checkpoints_logits(bases, tmp_path):
    from pathlib import Path

    from sft import merge

    first = Path(bases["merged"]).parent / "first"
    assert merge.main(["--checkpoint", str(first), "--output_dir", str(tmp_path / "m")]) == 0
    lora, tok, _ = load_sft_checkpoint(first)
    merged, _, _ = load_sft_checkpoint(tmp_path / "m")
    ids = tok(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (lora(ids).logits - merged(ids).logits).abs().max().item() < 1e-5


def test_qlora_trains_with_validation_on_cpu(pipeline, bases, tmp_path):
    """QLoRA's constrained validation ran the bf16-cast model in fp32 and crashed (dtype mismatch)."""
    trainer = run(pipeline, tmp_path / "q", "--model_name_or_path", bases["tied"], "--mode", "qlora",
                  "--eval_strategy", "steps", "--eval_steps", "1")
    assert any("eval_ndcg@10" in r for r in trainer.state.log_history)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)


def test_frozen_sid_rows_are_restored_not_mean_initialised(pipeline, tmp_path):
    run(pipeline, tmp_path / "m", "--train_sid_rows", "false")
    assert (tmp_path / "m" / SID_ROWS_FILE).is_file()
    model, tok, artifact = load_sft_checkpoint(tmp_path / "m")
    ids = tok.convert_tokens_to_ids(artifact.all_tokens())
    rows = model.get_input_embeddings().weight[ids]
    assert not torch.allclose(rows, rows.mean(0, keepdim=True).expand_as(rows))  # semantic init kept, not one mean


@pytest.mark.parametrize("mode", ["new_tokens", "full"])
def test_train_sid_rows_false_is_refused_where_it_cannot_mean_what_it_says(pipeline, tmp_path, mode):
    """Item 2: new_tokens + train_sid_rows: false trained the whole embedding matrix."""
    with pytest.raises(UserError, match=f"train_sid_rows: false with mode: {mode}"):
        run(pipeline, tmp_path / "x", "--mode", mode, "--train_sid_rows", "false")
    assert not (tmp_path / "x").exists()


CONST = ("--lr_scheduler_type", "constant", "--save_strategy", "steps", "--save_steps", "2")


@pytest.fixture(scope="module")
def three_steps(pipeline, tmp_path_factory):
    """A 3-step run that saved checkpoint-2, and a copy of that checkpoint without optimizer.pt."""
    root = tmp_path_factory.mktemp("resume")
    run(pipeline, root / "r", "--max_steps", "3", *CONST)
    no_opt = root / "checkpoint-2-no-optimizer"
    shutil.copytree(root / "r" / "checkpoint-2", no_opt)
    (no_opt / "optimizer.pt").unlink()
    return root / "r", no_opt


def test_resume_without_optimizer_state_is_refused_unless_asked(pipeline, three_steps, tmp_path, caplog):
    """Item 5: a checkpoint without optimizer.pt silently resumed with a fresh optimizer (other final weights)."""
    _, no_opt = three_steps
    with pytest.raises(UserError, match="has no optimizer.pt.*resume_fresh_optimizer: true"):
        run(pipeline, tmp_path / "x", "--max_steps", "4", *CONST, "--resume_from_checkpoint", str(no_opt))
    assert not (tmp_path / "x").exists()
    with caplog.at_level("WARNING", logger="sft.train"):
        resumed = run(pipeline, tmp_path / "r2", "--max_steps", "4", *CONST, "--resume_from_checkpoint", str(no_opt),
                      "--resume_fresh_optimizer", "true")
    assert resumed.state.global_step == 4
    assert any("fresh optimizer" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_resume_rewrites_the_metrics_log_from_the_checkpoint_step(pipeline, three_steps):
    """Item 5: metrics.jsonl was appended on resume, so step 3 (after checkpoint-2) appeared twice."""
    out, _ = three_steps
    log_before = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_before if "loss" in r] == [1, 2, 3]
    run(pipeline, out, "--max_steps", "4", *CONST, "--resume_from_checkpoint", str(out / "checkpoint-2"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4], steps  # step 3 once, from the resumed run
    assert records[:2] == log_before[:2]  # the lines up to the checkpoint are kept as they were


def test_adapter_checkpoint_without_weights_is_a_local_error(pipeline, tmp_path):
    """Item 8: a checkpoint directory without adapter weights fell through to hub code (HFValidationError)."""
    run(pipeline, tmp_path / "m")
    (tmp_path / "m" / "adapter_model.safetensors").unlink()
    with pytest.raises(DataError, match=f"{tmp_path / 'm'}: a lora checkpoint without its adapter "
                                        r"\(adapter_model.safetensors missing\)"):
        load_sft_checkpoint(tmp_path / "m")
    (tmp_path / "m" / "adapter_config.json").unlink()
    with pytest.raises(DataError, match=r"adapter_config.json missing"):
        load_sft_checkpoint(tmp_path / "m")
    with pytest.raises(UserError, match="SFT checkpoint not found"):
        load_sft_checkpoint(tmp_path / "nowhere")


def test_domain_adapter_without_weights_is_a_local_error(pipeline, bases, tmp_path):
    """Item 8, load_domain_adapters: the adapter directory went to peft as a possible hub id."""
    from sft.modeling import load_domain_adapters

    run(pipeline, tmp_path / "Mini", "--model_name_or_path", bases["merged"], "--train_sid_rows", "false")
    model, _, _ = load_domain_adapters(bases["merged"], {"Mini": tmp_path / "Mini"})
    assert set(model.peft_config) == {"Mini"}
    (tmp_path / "Mini" / "adapter_model.safetensors").unlink()
    with pytest.raises(DataError, match=f"{tmp_path / 'Mini'}: domain adapter 'Mini' without its adapter "
                                        r"\(adapter_model.safetensors missing\)"):
        load_domain_adapters(bases["merged"], {"Mini": tmp_path / "Mini"})
    with pytest.raises(UserError, match="domain adapter 'Other' not found"):
        load_domain_adapters(bases["merged"], {"Other": tmp_path / "nowhere"})


def test_loss_is_on_the_completion_only(pipeline, tmp_path, extra=()):
    """A TRL default change would silently put loss on the prompt: pin the labels the trainer really uses (its own
    tokenized dataset and collator, as sft/train.py builds them) against the prompt / completion tokenized here."""
    trainer = run(pipeline, tmp_path / "m", "--max_steps", "1", *extra)
    tok = trainer.processing_class
    examples = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(examples)
    for row, example in enumerate(examples):
        n_prompt = len(tok(example["prompt"], add_special_tokens=False)["input_ids"])
        n_completion = len(tok(example["completion"], add_special_tokens=False)["input_ids"])
        assert example["completion"].startswith("<a_") and n_completion == 3  # <a_i><b_j><|im_end|>
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        n = int(batch["attention_mask"][row].sum())
        assert n == n_prompt + n_completion
        assert (labels[:n_prompt] == -100).all(), "loss on prompt tokens"
        assert torch.equal(labels[n_prompt:n], ids[n_prompt:n]), "completion tokens not labelled with their ids"
        assert (labels[n:] == -100).all(), "loss on padding"


def test_time_budget_bar_counts_minutes_not_the_epoch_step_total(pipeline, tmp_path, capsys):
    run(pipeline, tmp_path / "m", "--max_steps", "-1", "--num_train_epochs", "1", "--time_budget_minutes", "0.002")
    err = capsys.readouterr().err
    assert "SFT (wall time budget)" in err and "/0.0 min" in err
    import re

    step_bar = re.compile(r"\d+/\d+ \[[\d:]+<[\d:]+, +[\d.]+(it/s|s/it)\]")  # the Trainer's epoch-total bar
    assert not step_bar.search(err), err[-500:]
    run(pipeline, tmp_path / "m2", "--max_steps", "2")
    assert step_bar.search(capsys.readouterr().err)  # (without a budget it is still there)


def test_the_completion_test_catches_loss_on_the_prompt(pipeline, tmp_path):
    with pytest.raises(AssertionError):
        test_loss_is_on_the_completion_only(pipeline, tmp_path, extra=("--completion_only_loss", "false"))


@pytest.mark.parametrize("extra, message", [
    (("--max_length", "40"), "max_length: 40 tokens cut the completion off every training example (12)"),
    (("--num_layers", "9"), "num_layers: must be in 1..2 (the model's decoder layers), got 9"),
])
def test_errors_found_once_the_model_is_loaded_are_one_line_and_leave_nothing(pipeline, tmp_path, capsys, extra,
                                                                              message):
    """Item 6: a max_length that leaves no completion failed in torch's sampler (`num_samples=0`) after the Trainer
    had created output_dir; too many layers was a ValueError traceback."""
    from sft.train import main

    dataset_dir, sid_dir = pipeline
    out = tmp_path / "out"
    assert main(["--config", CONFIG, "--dataset_dir", str(dataset_dir), "--sid_dir", str(sid_dir),
                 "--output_dir", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_max_length_cuts_and_drops_are_reported(caplog):
    """TRL cuts examples to max_length (a SID can lose its last token) and drops those left without a completion:
    say how many, instead of training on them silently."""
    from types import SimpleNamespace

    from datasets import Dataset

    from sft.train import check_truncation

    kept = Dataset.from_dict({"input_ids": [[1] * 5, [1] * 10, [1] * 10]})
    trainer = SimpleNamespace(train_dataset=kept, is_world_process_zero=lambda: True)
    with caplog.at_level("WARNING", logger="sft.train"):
        check_truncation(trainer, 4, 10, None)
    assert "max_length 10: 2 of 4 training examples were cut short, 1 dropped" in caplog.text
    caplog.clear()
    check_truncation(trainer, 3, 11, None)
    assert not caplog.text


def test_unpackable_4bit_layers_keep_the_plain_cpu_layout():
    """bitsandbytes' AVX512-BF16 CPU repacking crashes on layers narrower than a quantisation block (tiny models on
    such CPUs): those layers are switched to the plain layout, packable ones keep the fast kernel."""
    import bitsandbytes as bnb

    from sft.modeling import keep_plain_4bit_layout_where_unpackable

    model = torch.nn.Sequential(bnb.nn.Linear4bit(32, 16), bnb.nn.Linear4bit(128, 64))
    for layer in model:
        layer.support_avx512bf16_for_cpu = True
    assert keep_plain_4bit_layout_where_unpackable(model) == 1
    assert [layer.support_avx512bf16_for_cpu for layer in model] == [False, True]
