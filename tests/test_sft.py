"""sft/train.py end to end on the tiny model: what trains, what must not, save -> reload, modes, 4-bit, config."""

from __future__ import annotations

import pytest
import torch

from conftest import REPO
from sft.modeling import load_base, load_sft_checkpoint
from sft.models import load_causal_lm
from sft.train import run_sft as main
from sft_fixtures import make_tiny_pipeline
from tokenization.artifact import load_sid_artifact
from tokenization.vocab import extend_vocabulary

CONFIG = str(REPO / "configs" / "tiny" / "sft.yaml")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return make_tiny_pipeline(tmp_path_factory.mktemp("sft"))


def run(pipeline, out, *extra):
    dataset_dir, sid_dir = pipeline
    return main(["--config", CONFIG, "--dataset_dir", str(dataset_dir), "--sid_dir", str(sid_dir),
                 "--output_dir", str(out), *extra])


def reference_model(pipeline):
    """The untrained starting point: the tiny base with the same SID vocabulary and initialisation."""
    from data_builders.dataset import load_rec_dataset

    model, tok = load_causal_lm("tiny")
    report = extend_vocabulary(model, tok, load_sid_artifact(pipeline[1]), init="semantic",
                               dataset=load_rec_dataset(pipeline[0]))
    return model, list(range(report["first_token_id"], report["last_token_id"] + 1))


def test_lora_trains_adapters_and_sid_rows_only(pipeline, tmp_path):
    run(pipeline, tmp_path / "lora")
    ref, sid_ids = reference_model(pipeline)
    model, _, _ = load_sft_checkpoint(tmp_path / "lora")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero: it moved
    emb = model.get_input_embeddings().weight
    ref_emb = ref.get_input_embeddings().weight
    other = [i for i in range(emb.shape[0]) if i not in sid_ids]
    assert not torch.allclose(emb[sid_ids], ref_emb[sid_ids])  # the new tokens learned
    assert torch.equal(emb[other], ref_emb[other])  # the original vocabulary is bit-identical
    base = model.get_base_model()
    assert torch.equal(base.model.layers[0].mlp.up_proj.weight, ref.model.layers[0].mlp.up_proj.weight)
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr() or torch.equal(
        model.get_output_embeddings().weight, emb)  # tied head sees the trained SID rows


def test_save_reload_gives_identical_logits(pipeline, tmp_path):
    trainer = run(pipeline, tmp_path / "lora")
    trainer.model.eval()
    model, tok, _ = load_sft_checkpoint(tmp_path / "lora")
    ids = tok("<a_0><b_1><a_1><b_2>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(trainer.model(ids).logits, model(ids).logits, atol=1e-6)
    assert tok.convert_ids_to_tokens(ids[0].tolist()) == ["<a_0>", "<b_1>", "<a_1>", "<b_2>"]


@pytest.mark.parametrize("mode", ["full", "new_tokens"])
def test_other_modes_train_and_reload(pipeline, tmp_path, mode):
    trainer = run(pipeline, tmp_path / mode, "--mode", mode)
    ref, sid_ids = reference_model(pipeline)
    model, tok, _ = load_sft_checkpoint(tmp_path / mode)
    up, ref_up = model.model.layers[0].mlp.up_proj.weight, ref.model.layers[0].mlp.up_proj.weight
    assert torch.equal(up, ref_up) == (mode == "new_tokens")
    emb, ref_emb = model.get_input_embeddings().weight, ref.get_input_embeddings().weight
    assert not torch.allclose(emb[sid_ids], ref_emb[sid_ids])
    if mode == "new_tokens":
        assert torch.equal(emb[: sid_ids[0]], ref_emb[: sid_ids[0]])
    ids = torch.tensor([[1, 2, sid_ids[0]]])
    with torch.no_grad():
        assert torch.allclose(trainer.model.eval()(ids).logits, model(ids).logits, atol=1e-6)


def test_4bit_base_runs_forward_and_backward_on_cpu(tmp_path):
    model, tok = load_causal_lm("tiny")
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    q, _ = load_base(str(tmp_path / "tiny"), "qlora")
    assert any("4bit" in type(m).__name__ for m in q.modules())
    from sft.modeling import apply_mode

    from sft.modeling import SidRowGuard, trainable_embedding_params

    q = apply_mode(q, "qlora", [1, 2], lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
    params = trainable_embedding_params(q)
    SidRowGuard(params, [1, 2]).install()
    out = q(torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]]))
    out.loss.backward()
    emb_grad = params[0].grad
    assert emb_grad[[1, 2]].abs().sum() > 0 and emb_grad[3:].abs().sum() == 0  # only the SID rows learn
    grads = [p.grad for n, p in q.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_config_typo_and_bad_mode_fail_before_training(pipeline, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "tiny" / "sft.yaml").read_text() + "lora_rnak: 8\n")
    with pytest.raises(ValueError, match="lora_rnak"):
        main(["--config", str(bad)])
    with pytest.raises(ValueError, match="mode='lora4'"):
        run(pipeline, tmp_path / "x", "--mode", "lora4")
    with pytest.raises(ValueError, match="set `mode: lora | qlora`"):
        run(pipeline, tmp_path / "x", "--use_peft", "true")


def test_missing_sid_artifact_is_a_clear_error(pipeline, tmp_path):
    from data_builders.cli import UserError

    with pytest.raises(UserError, match="not a sid_dir: no meta.json inside"):
        main(["--config", CONFIG, "--dataset_dir", str(pipeline[0]), "--sid_dir", str(tmp_path),
              "--output_dir", str(tmp_path / "o")])


def test_domain_adapters_on_a_merged_base_with_mixed_domain_generation(tmp_path):
    from sft.modeling import load_domain_adapters, merge_checkpoint

    two = make_tiny_pipeline(tmp_path / "two", domains=("Mini", "Mini2"))
    run(two, tmp_path / "shared")
    merge_checkpoint(tmp_path / "shared", tmp_path / "merged")
    for domain in ("Mini", "Mini2"):
        run(two, tmp_path / domain, "--model_name_or_path", str(tmp_path / "merged"), "--domains", domain,
            "--train_sid_rows", "false", "--weight_title2sid", "0")
    model, tok, _ = load_domain_adapters(tmp_path / "merged", {d: tmp_path / d for d in ("Mini", "Mini2")})
    assert set(model.peft_config) == {"Mini", "Mini2"}
    prompts = ["<a_0><b_1>", "<a_2><b_0>"]
    batch = tok(prompts, return_tensors="pt")
    gen = dict(max_new_tokens=3, do_sample=False, num_beams=2, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        mixed = model.generate(**batch, adapter_names=["Mini", "Mini2"], **gen)
        alone = []
        for i, name in enumerate(("Mini", "Mini2")):
            model.set_adapter(name)
            alone.append(model.generate(**tok(prompts[i : i + 1], return_tensors="pt"), **gen)[0])
        logits_a = model(**tok(prompts[:1], return_tensors="pt")).logits  # adapter Mini2 active
        model.set_adapter("Mini")
        logits_b = model(**tok(prompts[:1], return_tensors="pt")).logits
    for row, ref in zip(mixed, alone):  # the mixed batch pads rows that finished early
        assert torch.equal(row[: len(ref)], ref) and (row[len(ref):] == tok.pad_token_id).all()
    assert not torch.allclose(logits_a, logits_b)  # the two domain adapters really differ


def test_resume_continues_from_the_saved_step_with_no_data_lost(pipeline, tmp_path):
    const = ("--lr_scheduler_type", "constant")  # so a 2-step run is the first half of the 4-step run
    straight = run(pipeline, tmp_path / "straight", "--max_steps", "4", *const)
    run(pipeline, tmp_path / "killed", "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "2",
        *const)  # stands in for a run killed right after its step-2 checkpoint
    resumed = run(pipeline, tmp_path / "killed", "--max_steps", "4", *const,
                  "--resume_from_checkpoint", str(tmp_path / "killed" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert losses(resumed)[-2:] == pytest.approx(losses(straight)[-2:], rel=1e-4)
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_two_cpu_processes_match_one_process_with_doubled_accumulation(pipeline, tmp_path):
    """The proof that multi-process launches are wired: gradients are all-reduced across 2 gloo processes."""
    import json
    import os
    import subprocess
    import sys

    dataset_dir, sid_dir = pipeline
    common = ["--config", CONFIG, "--dataset_dir", str(dataset_dir), "--sid_dir", str(sid_dir), "--max_steps", "3",
              "--per_device_train_batch_size", "2", "--lr_scheduler_type", "constant", "--learning_rate", "1.0e-3"]
    run(pipeline, tmp_path / "one", *common[6:], "--gradient_accumulation_steps", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    res = subprocess.run([*torchrun, str(REPO / "sft" / "train.py"), *common, "--output_dir", str(tmp_path / "two"),
                          "--ddp_backend", "gloo"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    curve = lambda d: [h["loss"] for h in json.loads((d / "trainer_state.json").read_text())["log_history"]  # noqa
                       if "loss" in h]
    one, two = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, rel=2e-3)


def test_constrained_validation_selects_the_best_checkpoint(pipeline, tmp_path):
    import json

    trainer = run(pipeline, tmp_path / "val", "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2",
                  "--save_strategy", "steps", "--save_steps", "2", "--metric_for_best_model", "ndcg@10",
                  "--load_best_model_at_end", "true")
    evals = [h for h in trainer.state.log_history if "eval_ndcg@10" in h]
    assert len(evals) >= 2 and all(0.0 <= h["eval_ndcg@10"] <= 1.0 and h["eval_invalid_rate"] == 0.0 for h in evals)
    assert trainer.state.best_metric == max(h["eval_ndcg@10"] for h in evals)
    lines = [json.loads(x) for x in (tmp_path / "val" / "metrics.jsonl").read_text().splitlines()]
    assert any("tokens_per_s" in x for x in lines) and all(x["peak_rss_mb"] > 0 for x in lines)
    logged = [x["eval_ndcg@10"] for x in lines if "eval_ndcg@10" in x]  # the constrained metrics reach the log
    assert logged == [h["eval_ndcg@10"] for h in evals]


def test_every_shipped_sft_and_accelerate_config_parses():
    import yaml
    from trl import ModelConfig, SFTConfig, TrlParser

    from sft.train import ScriptArguments

    configs = sorted((REPO / "configs" / "sft").glob("*.yaml")) + [REPO / "configs" / "tiny" / "sft.yaml"]
    # GenCDR's configs belong to python -m sft.cross_domain (tests/test_cross_domain.py parses them)
    configs = [c for c in configs if not c.read_text().startswith("# python -m sft.cross_domain")]
    assert len(configs) >= 4
    for cfg in configs:
        assert cfg.read_text().split("\n")[0].startswith("# "), cfg  # first line: the command that runs it
        gpu = "bf16: true" in cfg.read_text()  # GPU configs: bf16 cannot be validated on a CPU machine
        script, training, model_args = TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(
            ["--config", str(cfg), *(["--bf16", "false"] if gpu else [])])
        assert script.mode in ("lora", "qlora", "full", "new_tokens") and model_args.model_name_or_path, cfg
        if not gpu:  # CPU configs must switch TRL's GPU defaults off explicitly
            assert "bf16: false" in cfg.read_text() and "gradient_checkpointing: false" in cfg.read_text(), cfg
    for cfg in [REPO / "accelerate_config.yaml", *sorted((REPO / "configs" / "accelerate").glob("*.yaml"))]:
        assert yaml.safe_load(cfg.read_text())["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED"), cfg


def test_scratch_model_has_a_sid_only_vocabulary_and_trains_end_to_end(pipeline, tmp_path):
    """TIGER-style base: specials + SID tokens only, random weights, full mode; reloads and decodes real items."""
    from data_builders.dataset import load_rec_dataset
    from data_builders.prompts import SID_SEP, next_item_prompt
    from decoding.catalogue import Catalogue
    from decoding.recommend import recommend

    artifact = load_sid_artifact(pipeline[1])
    trainer = run(pipeline, tmp_path / "scratch", "--model_name_or_path", "scratch", "--mode", "full",
                  "--weight_title2sid", "0", "--scratch_hidden_size", "32", "--scratch_layers", "2",
                  "--scratch_heads", "2", "--max_steps", "3")
    model, tok, _ = load_sft_checkpoint(tmp_path / "scratch")
    assert len(tok) == 4 + len(artifact.all_tokens())  # <pad> <unk> <eos> <|sep|> + SID tokens
    prompt = next_item_prompt(["<a_0><b_1>", "<a_1><b_2>"], tok)
    assert prompt == f"<a_0><b_1>{SID_SEP}<a_1><b_2>{SID_SEP}"
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    assert tok.unk_token_id not in ids[0].tolist() and ids.shape[1] == 6
    with torch.no_grad():
        assert torch.allclose(trainer.model.eval()(ids).logits, model(ids).logits, atol=1e-6)
    dataset = load_rec_dataset(pipeline[0])
    rows = list(dataset.splits["test"])[:3]
    recs = recommend(model, tok, Catalogue.from_artifact(artifact, dataset), [list(r["history"]) for r in rows], k=3,
                     domains=[r["domain"] for r in rows], show_progress=False)
    known = set(dataset.item_index())
    assert all(len(rec) == 3 and all(item in known for item, _ in rec) for rec in recs)


def test_scratch_model_rejects_text_tasks_and_lora(pipeline, tmp_path):
    with pytest.raises(ValueError, match="SID-only vocabulary"):
        run(pipeline, tmp_path / "s1", "--model_name_or_path", "scratch", "--mode", "full")  # title2sid weight 1
    with pytest.raises(ValueError, match="contains `test`"):
        run(pipeline, tmp_path / "s0", "--train_splits", "train", "test")
    with pytest.raises(ValueError, match="mode: full"):
        run(pipeline, tmp_path / "s2", "--model_name_or_path", "scratch", "--weight_title2sid", "0")


def test_time_budget_cpu_clock_ignores_time_spent_waiting():
    """A wall-clock budget counts sleeping (another job holding the cores); the cpu clock counts only work done."""
    import time
    from types import SimpleNamespace

    from transformers import TrainerControl

    from sft.callbacks import TimeBudget

    args, state = SimpleNamespace(eval_strategy="no", save_strategy="no"), SimpleNamespace(global_step=1)
    wall, cpu = TimeBudget(0.05 / 60, "wall"), TimeBudget(0.05 / 60, "cpu")
    for b in (wall, cpu):
        b.on_train_begin(args, state, TrainerControl())
    time.sleep(0.2)
    assert wall.on_step_end(args, state, TrainerControl()).should_training_stop
    assert not cpu.on_step_end(args, state, TrainerControl()).should_training_stop
    end = time.process_time() + 0.05 * torch.get_num_threads() + 0.05
    while time.process_time() < end:  # burn CPU
        sum(range(1000))
    assert cpu.on_step_end(args, state, TrainerControl()).should_training_stop
    with pytest.raises(ValueError, match="clock"):
        TimeBudget(1.0, "gpu")
