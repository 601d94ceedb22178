"""rl/: rewards on hand-made groups, constrained rollouts vs a teacher-forced pass, GRPO / DPO moving a tiny policy
the right way, the entry points end to end (2 steps), reload -> identical logits, and bad input refused up front."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from sft.modeling import load_sft_checkpoint
from sft.train import run_sft
from sft_fixtures import make_tiny_pipeline

from rl.rewards import (build_reward_funcs, hit_reward, make_prefix_reward, make_semantic_reward, ndcg_penalties,
                        ndcg_rank_reward)

TINY = REPO / "configs" / "tiny"


# ----------------------------------------------------------------------------------------------- rewards
def test_hit_reward_marks_only_the_target():
    out = hit_reward(["x"] * 4, [[0]] * 4, target=["a", "a", "b", "b"], item_id=["a", "c", "a", "b"])
    assert out == [1.0, 0.0, 0.0, 1.0]


def test_ndcg_penalties_match_the_formula_by_hand():
    # G = 3: discounts 1, 1/log2(3), 1/2; sum = 2.1309...
    total = 1 + 1 / math.log2(3) + 0.5
    assert np.allclose(ndcg_penalties(3), [-1 / total, -(1 / math.log2(3)) / total, -0.5 / total])


def test_ndcg_rank_reward_on_hand_made_groups():
    # group 0 holds the target at rank 1; group 1 does not hold its target at all
    target = ["t"] * 3 + ["u"] * 3
    items = ["w1", "t", "w2", "x", "y", "z"]
    ranks = [0, 1, 2, 0, 1, 2]
    out = ndcg_rank_reward([""] * 6, [[0]] * 6, target=target, item_id=items, group_id=[0, 0, 0, 1, 1, 1],
                           group_rank=ranks)
    p = ndcg_penalties(3)
    assert out[:3] == pytest.approx([p[0], 0.0, p[2]])  # the wrong item above the target is punished most
    assert out[3:] == [0.0, 0.0, 0.0]  # a group without the target: all zeros
    assert ndcg_rank_reward([], [], target=[], item_id=[], group_id=[], group_rank=[]) == []


def test_prefix_reward_is_graded_per_matched_level():
    sids = {"t": ["<a_1>", "<b_2>", "<c_3>"], "same2": ["<a_1>", "<b_2>", "<c_0>"],
            "same1": ["<a_1>", "<b_0>", "<c_3>"], "none": ["<a_0>", "<b_2>", "<c_3>"]}
    out = make_prefix_reward(sids)([""] * 4, [[0]] * 4, target=["t"] * 4, item_id=["t", "same2", "same1", "none"])
    assert out == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])  # a later match after a mismatch earns nothing


def test_semantic_reward_is_the_cosine_of_item_vectors():
    reward = make_semantic_reward(["a", "b", "c"], np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
    out = reward([""] * 3, [[0]] * 3, target=["a", "a", "a"], item_id=["a", "b", "c"])
    assert out == pytest.approx([1.0, 0.0, 1 / math.sqrt(2)])


def test_reward_set_and_weights_follow_the_config():
    funcs, weights = build_reward_funcs({"hit": 1.0, "ndcg": 0.0, "prefix": 0.5}, sid_tokens={"a": ["<a_0>"]})
    assert [f.__name__ for f in funcs] == ["hit_reward", "prefix_reward"] and weights == [1.0, 0.5]
    with pytest.raises(ValueError, match="every reward weight is 0"):
        build_reward_funcs({"hit": 0.0})
    with pytest.raises(ValueError, match="needs the column 'target'"):
        hit_reward([""], [[0]], target=None, item_id=["a"])


# ----------------------------------------------------------------------------------------------- rollouts
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    dataset_dir, sid_dir = make_tiny_pipeline(root, ("Mini", "Other"))
    common = ["--config", str(TINY / "sft.yaml"), "--dataset_dir", str(dataset_dir), "--sid_dir", str(sid_dir)]
    run_sft([*common, "--output_dir", str(root / "lora")])
    run_sft([*common, "--output_dir", str(root / "scratch"), "--model_name_or_path", "scratch", "--mode", "full",
             "--weight_title2sid", "0", "--scratch_hidden_size", "32", "--scratch_layers", "2", "--scratch_heads",
             "2", "--max_steps", "20", "--learning_rate", "3e-3"])
    return {"dataset": dataset_dir, "sids": sid_dir, "lora": root / "lora", "scratch": root / "scratch"}


def _policy(pipeline, which="scratch"):
    from data_builders.dataset import load_rec_dataset
    from decoding.catalogue import Catalogue

    model, tok, artifact = load_sft_checkpoint(pipeline[which])
    dataset = load_rec_dataset(pipeline["dataset"])
    return model, tok, Catalogue.from_artifact(artifact, dataset), dataset


def _teacher_forced(model, tok, prompt: str, completion: list[int]) -> list[float]:
    """Plain per-token log-probs of ``completion`` after ``prompt``: one unpadded forward, nothing shared."""
    ids = tok(prompt)["input_ids"]
    full = torch.tensor([ids + completion])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0].float(), -1)
    return [float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(completion)]


@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_rollouts_are_valid_items_of_the_domain_with_teacher_forced_logprobs(pipeline, mode):
    from data_builders.prompts import next_item_prompt
    from rl.rollouts import ConstrainedRollouts

    model, tok, catalogue, dataset = _policy(pipeline)
    rows = list(dataset.splits["train"])[:3]
    prompts = [next_item_prompt([catalogue.sid_string(i) for i in r["history"]], tok, 10) for r in rows]
    domain_of = dict(zip(prompts, [r["domain"] for r in rows]))
    G = 4
    rollouts = ConstrainedRollouts(tok, catalogue, G, mode, temperature=1.5, domain_of=domain_of,
                                   targets=dict(zip(prompts, [r["target"] for r in rows])))
    out = rollouts.generate(model, [p for p in prompts for _ in range(G)])
    assert len(out["completion_ids"]) == len(out["logprobs"]) == len(out["item_id"]) == 3 * G
    by_sid = {tuple(tok.convert_tokens_to_ids(catalogue.sid_tokens(i))): i for i in catalogue.item_ids}
    for g, (prompt, row) in enumerate(zip(prompts, rows)):
        items = out["item_id"][g * G:(g + 1) * G]
        assert all(catalogue.domains[catalogue.row(i)] == row["domain"] for i in items)
        if mode == "beam":
            assert len(set(items)) == G  # G distinct items
            assert out["group_rank"][g * G:(g + 1) * G] == list(range(G))
        sums = []
        for s in range(G):
            comp = out["completion_ids"][g * G + s]
            assert comp[-1] == tok.eos_token_id and by_sid[tuple(comp[:-1])] == items[s]
            assert out["logprobs"][g * G + s] == pytest.approx(_teacher_forced(model, tok, prompt, comp), abs=1e-4)
            sums.append(sum(out["logprobs"][g * G + s]))
        ranks = out["group_rank"][g * G:(g + 1) * G]
        assert [sums[i] for i in np.argsort(ranks)] == sorted(sums, reverse=True)  # rank 0 = highest log-prob
    stats = rollouts.pop_stats()
    assert 0.0 <= stats["target_in_group"] <= 1.0 and rollouts.pop_stats() == {}


@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_injected_target_makes_every_group_hold_it(pipeline, mode):
    from data_builders.prompts import next_item_prompt
    from rl.rollouts import ConstrainedRollouts

    model, tok, catalogue, dataset = _policy(pipeline)
    rows = list(dataset.splits["train"])[:4]
    prompts = [next_item_prompt([catalogue.sid_string(i) for i in r["history"]], tok, 10) for r in rows]
    targets = dict(zip(prompts, [r["target"] for r in rows]))
    G = 2  # small groups: most lack the target
    plain = ConstrainedRollouts(tok, catalogue, G, mode, domain_of=dict(zip(prompts, [r["domain"] for r in rows])),
                                targets=targets)
    inject = ConstrainedRollouts(tok, catalogue, G, mode, domain_of=plain.domain_of, targets=targets,
                                 inject_target=True)
    batch = [p for p in prompts for _ in range(G)]
    before, after = plain.generate(model, batch), inject.generate(model, batch)
    lacking = [g for g in range(4) if targets[prompts[g]] not in before["item_id"][g * G:(g + 1) * G]]
    for g, prompt in enumerate(prompts):
        group = slice(g * G, (g + 1) * G)
        assert targets[prompt] in after["item_id"][group]
        assert sorted(after["group_rank"][group]) == list(range(G))
        for comp, lp in zip(after["completion_ids"][group], after["logprobs"][group]):
            assert lp == pytest.approx(_teacher_forced(model, tok, prompt, comp), abs=1e-4)
    stats = inject.pop_stats()
    if mode == "beam":  # deterministic: the same beams lack the target in both runs
        assert stats["injected_share"] == pytest.approx(len(lacking) / 4)
    assert stats["target_in_group"] < 1.0 or not lacking  # the statistic is measured before injection


def test_rollouts_refuse_groups_that_cannot_be_distinct(pipeline):
    from rl.rollouts import ConstrainedRollouts

    _, tok, catalogue, _ = _policy(pipeline)
    with pytest.raises(ValueError, match="larger than the smallest domain"):
        ConstrainedRollouts(tok, catalogue, 7, "beam", domain_of={"p": "Mini"})
    with pytest.raises(ValueError, match=">= 2"):
        ConstrainedRollouts(tok, catalogue, 1)
    with pytest.raises(ValueError, match="rollout mode"):
        ConstrainedRollouts(tok, catalogue, 2, "greedy")


# ----------------------------------------------------------------------------------------------- learning
def _always_right_task(pipeline, n_rows=16):
    """Every prompt's target is the same item: a policy that learns anything learns to put it first."""
    from data_builders.prompts import next_item_prompt

    model, tok, catalogue, dataset = _policy(pipeline)
    rows = [r for r in dataset.splits["train"] if r["domain"] == "Mini"][:n_rows]
    right = [i for i in catalogue.item_ids if catalogue.domains[catalogue.row(i)] == "Mini"][0]
    prompts = [next_item_prompt([catalogue.sid_string(i) for i in r["history"]], tok, 10) for r in rows]
    return model, tok, catalogue, prompts, right


def _log_p(model, tok, catalogue, prompts, item):
    comp = tok.convert_tokens_to_ids(catalogue.sid_tokens(item)) + [tok.eos_token_id]
    model.eval()
    return float(np.mean([sum(_teacher_forced(model, tok, p, comp)) for p in prompts]))


def test_grpo_steps_raise_the_mean_reward_on_an_always_right_task(pipeline, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rl.rollouts import ConstrainedRollouts

    model, tok, catalogue, prompts, right = _always_right_task(pipeline)
    before = _log_p(model, tok, catalogue, prompts, right)
    rollouts = ConstrainedRollouts(tok, catalogue, 4, "sample", domain_of={p: "Mini" for p in prompts})
    args = GRPOConfig(output_dir=str(tmp_path / "g"), per_device_train_batch_size=16, num_generations=4,
                      max_steps=12, learning_rate=3e-2, beta=0.0, loss_type="grpo", bf16=False,
                      gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                      logging_steps=1, disable_tqdm=True, max_completion_length=4, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[hit_reward], args=args, processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": p, "target": right} for p in prompts]),
                          rollout_func=rollouts)
    model.train()
    trainer.train()
    rewards = [r["rewards/hit_reward/mean"] for r in trainer.state.log_history if "rewards/hit_reward/mean" in r]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3])  # sampled hits rise
    assert _log_p(trainer.model, tok, catalogue, prompts, right) > before + 0.5


def test_dpo_steps_raise_the_chosen_minus_rejected_margin(pipeline, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rl.pairs import build_pairs

    model, tok, catalogue, _, right = _always_right_task(pipeline)
    from data_builders.dataset import load_rec_dataset

    rows = [dict(r, target=right) for r in load_rec_dataset(pipeline["dataset"]).splits["train"]
            if r["domain"] == "Mini"][:16]
    pairs, stats = build_pairs(model, tok, catalogue, rows, history_len=10, negatives=2, show_progress=False)
    assert stats["pairs"] == 2 * len(rows) and all(p["rejected_item"] != right for p in pairs)
    assert all(p["chosen"].endswith(tok.eos_token) for p in pairs)
    args = DPOConfig(output_dir=str(tmp_path / "d"), per_device_train_batch_size=8, max_steps=8, learning_rate=1e-2,
                     beta=0.1, bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                     save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    trainer = DPOTrainer(model=model, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")}
                                                          for p in pairs]))
    model.train()
    trainer.train()
    margins = [r["rewards/margins"] for r in trainer.state.log_history if "rewards/margins" in r]
    assert margins[-1] > margins[0] and margins[-1] > 0


def test_negative_sources(pipeline):
    from rl.pairs import build_pairs

    model, tok, catalogue, dataset = _policy(pipeline)
    rows = list(dataset.splits["train"])[:6]
    for source in ("popular", "random"):
        pairs, _ = build_pairs(model, tok, catalogue, rows, history_len=10, negatives=3, source=source,
                               popularity_rows=list(dataset.splits["train"]))
        assert len(pairs) == 18
        for p, r in zip(pairs, [r for r in rows for _ in range(3)]):
            assert p["rejected_item"] != r["target"] and catalogue.domains[catalogue.row(p["rejected_item"])] == \
                r["domain"]
    with pytest.raises(ValueError, match="needs 7 items"):
        build_pairs(model, tok, catalogue, rows, history_len=10, negatives=6, source="random")


# ----------------------------------------------------------------------------------------------- entry points
def _cli(pipeline, which, out, script="grpo", *extra):
    from rl.dpo import run_dpo
    from rl.grpo import run_grpo

    run = run_grpo if script == "grpo" else run_dpo
    return run(["--config", str(TINY / f"{script}.yaml"), "--sft_checkpoint", str(pipeline[which]),
                "--dataset_dir", str(pipeline["dataset"]), "--output_dir", str(out), *extra])


def _same_logits(a, b, tok):
    ids = tok("<a_0><b_1>" + (tok.sep_token or "") + "<a_1><b_2>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return torch.allclose(a.eval()(ids).logits, b.eval()(ids).logits, atol=1e-5)


@pytest.mark.parametrize("script", ["grpo", "dpo"])
@pytest.mark.parametrize("which", ["scratch", "lora"])
def test_entry_point_trains_saves_and_reloads_to_identical_logits(pipeline, tmp_path, script, which):
    from eval.models.generative import GenerativeRecommender
    from eval.recommenders import Query
    from data_builders.dataset import load_rec_dataset

    out = tmp_path / f"{script}_{which}"
    trainer = _cli(pipeline, which, out, script)
    assert trainer.state.global_step == 2
    parent, _, _ = load_sft_checkpoint(pipeline[which])
    model, tok, _ = load_sft_checkpoint(out)
    assert _same_logits(trainer.model, model, tok)
    meta = json.loads((out / "genrec_sft.json").read_text())
    assert meta["stage"] == script and meta["parent_checkpoint"] == str(pipeline[which])
    assert meta["best_step"] in (0, 1, 2) and [c["step"] for c in meta["valid_curve"]] == [0, 1, 2]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("valid_ndcg@10" in r for r in records) and any("peak_rss_mb" in r for r in records)
    if script == "grpo":
        logged = {k for r in records for k in r}
        assert {"rewards/hit_reward/mean", "rewards/ndcg_rank_reward/mean", "kl", "frac_reward_zero_std",
                "rollout/target_in_group", "tokens_per_s"} <= logged
    if meta["best_step"] == 0:  # the saved policy is the start: nothing chosen on test, nothing lost on valid
        assert _same_logits(parent, model, tok)
    # eval's generative method loads it unchanged
    dataset = load_rec_dataset(pipeline["dataset"])
    rec = GenerativeRecommender(str(out), num_beams=3)
    rec.fit(dataset, [], None)
    row = dataset.splits["test"][0]
    query = Query(row=0, user_id=row["user_id"], domain=row["domain"], history=tuple(row["history"]))
    items = rec.recommend([query], 3)[0]
    assert len(items) == 3 and all(rec.catalogue.domains[rec.catalogue.row(i)] == row["domain"] for i in items)


def test_grpo_sample_mode_and_no_validation_run(pipeline, tmp_path):
    trainer = _cli(pipeline, "scratch", tmp_path / "s", "grpo", "--rollout_mode", "sample", "--val_rec_rows", "0",
                   "--temperature", "1.2")
    meta = json.loads((tmp_path / "s" / "genrec_sft.json").read_text())
    assert trainer.state.global_step == 2 and meta["rollout_mode"] == "sample" and "best_step" not in meta


def _other_dataset(tmp_path):
    from sft_fixtures import make_tiny_pipeline as make

    return make(tmp_path / "other", ("Solo",))[0]


BAD = [
    ("no_checkpoint", "grpo", lambda p, t: ["--sft_checkpoint", str(t / "missing")], "sft_checkpoint not found"),
    ("not_an_sft_checkpoint", "grpo", lambda p, t: ["--sft_checkpoint", str(p["dataset"])],
     "not an SFT checkpoint (no genrec_sft.json)"),
    ("other_dataset", "grpo", lambda p, t: ["--dataset_dir", str(_other_dataset(t))], "trained on dataset"),
    ("one_generation", "grpo", ["--num_generations", "1", "--per_device_train_batch_size", "2"],
     "at least 2 generations per prompt"),
    ("too_many_generations", "grpo", ["--num_generations", "8", "--per_device_train_batch_size", "8"],
     "larger than domain"),
    ("batch_not_multiple", "grpo", ["--per_device_train_batch_size", "6"], "must be divisible by num_generations"),
    ("bad_loss", "grpo", ["--loss_type", "magic"], "`loss_type`"),
    ("bad_mode", "grpo", ["--rollout_mode", "greedy"], "`rollout_mode`"),
    ("all_weights_zero", "grpo", ["--weight_hit", "0", "--weight_ndcg", "0", "--weight_prefix", "0"],
     "every reward weight is 0"),
    ("semantic_without_embeddings", "grpo", ["--weight_semantic", "1"], "needs embeddings_dir"),
    ("negative_weight", "grpo", ["--weight_hit", "-1"], "`weight_hit`"),
    ("test_split", "grpo", ["--train_splits", "test"], "`train_splits`"),
    ("valid_trained_and_validated", "grpo", ["--train_splits", "train", "valid"], "validation rows are training rows"),
    ("vllm", "grpo", ["--use_vllm", "true"], "use_vllm"),
    ("bf16_on_cpu", "grpo", ["--bf16", "true"], "bf16"),
    ("unknown_key", "grpo", ["--rollout_modes", "beam"], "rollout_modes"),
    ("dpo_bad_loss", "dpo", ["--loss_type", "sdpo"], "`loss_type`"),
    ("dpo_bad_source", "dpo", ["--negative_source", "hardest"], "`negative_source`"),
    ("dpo_too_many_negatives", "dpo", ["--negatives", "6"], "needs 7 items per domain"),
    ("dpo_zero_negatives", "dpo", ["--negatives", "0"], "`negatives`"),
]


@pytest.mark.parametrize("case_id, script, extra, message", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(pipeline, tmp_path, capsys, case_id, script, extra,
                                                         message):
    from rl.dpo import main as dpo_main
    from rl.grpo import main as grpo_main

    out = tmp_path / "out"
    extra = extra(pipeline, tmp_path) if callable(extra) else extra
    args = ["--config", str(TINY / f"{script}.yaml"), "--sft_checkpoint", str(pipeline["scratch"]),
            "--dataset_dir", str(pipeline["dataset"]), "--output_dir", str(out), *extra]
    assert (grpo_main if script == "grpo" else dpo_main)(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not out.exists()


def test_every_shipped_rl_config_parses():
    from trl import DPOConfig, GRPOConfig

    from data_builders.cli import parse_config
    from rl.dpo import DPOArguments
    from rl.grpo import GRPOArguments

    configs = sorted((REPO / "configs" / "rl").glob("*.yaml")) + [TINY / "grpo.yaml", TINY / "dpo.yaml"]
    assert len(configs) >= 5
    for path in configs:
        kinds = (DPOArguments, DPOConfig) if "dpo" in path.name else (GRPOArguments, GRPOConfig)
        gpu = "gpu" in path.name  # bf16 on a machine without a GPU is refused by TrainingArguments itself
        extra = ["--bf16", "false"] if gpu and not torch.cuda.is_available() else []
        script, training = parse_config(kinds, ["--config", str(path), *extra])
        assert training.bf16 is False or gpu, path
        assert training.gradient_checkpointing is False or "gpu" in path.name or "smollm2" in path.name, path


def test_eval_reports_the_sft_and_the_rl_row_on_the_same_rows(pipeline, tmp_path):
    from eval.run import run_eval

    rl_dir = tmp_path / "rl"
    _cli(pipeline, "scratch", rl_dir, "grpo", "--val_rec_rows", "0")
    metrics = run_eval(["--config", str(TINY / "eval.yaml"), "--dataset", str(pipeline["dataset"]),
                        "--embeddings", "", "--output_dir", str(tmp_path / "eval"),
                        "--methods", "generative", "generative_rl", "--generative_checkpoint",
                        str(pipeline["scratch"]), "--generative_rl_checkpoint", str(rl_dir),
                        "--generative_num_beams", "5", "--ks", "1", "3", "5", "--latency_rows", "0"])
    assert metrics["method_order"] == ["generative", "generative_rl"]
    sft, rl = metrics["methods"]["generative"]["all"], metrics["methods"]["generative_rl"]["all"]
    assert sft["rows"] == rl["rows"] > 0 and rl["invalid_rate"] == 0.0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "generative_rl" in report
    # the report shows how each row was made: the RL row's curves are its SFT parent's, then its own (GRPO reward)
    stages = [(Path(s["checkpoint"]), s["stage"]) for s in metrics["training"]["generative_rl"]["curves"]]
    assert stages == [(Path(pipeline["scratch"]), "sft"), (rl_dir, "grpo")]
    grpo = metrics["training"]["generative_rl"]["curves"][1]["series"]
    assert "reward" in grpo and "loss" in metrics["training"]["generative"]["curves"][0]["series"]
    assert "## Training curves (generative rows)" in report and (tmp_path / "eval" / "training_curves.png").stat().st_size


def test_validation_rows_leave_out_the_rows_the_parent_was_selected_on(pipeline):
    from data_builders.dataset import load_rec_dataset
    from rl.common import RLArguments, validation_rows
    from sft.callbacks import sample_rows

    dataset = load_rec_dataset(pipeline["dataset"])
    valid = dataset.splits["valid"]
    parent = {"config": {"script": {"val_rec_rows": 5}, "training": {"seed": 3, "eval_strategy": "steps"}}}
    chosen_on = {(r["user_id"], r["target"]) for r in sample_rows(valid, 5, 3)}  # what sft/train.py scored
    rows = validation_rows(RLArguments(val_rec_rows=100), dataset, 0, parent)
    assert len(rows) == len(valid) - 5 and not {(r["user_id"], r["target"]) for r in rows} & chosen_on
    unselected = {"config": {"script": {"val_rec_rows": 5}, "training": {"seed": 3, "eval_strategy": "no"}}}
    assert len(validation_rows(RLArguments(val_rec_rows=100), dataset, 0, unselected)) == len(valid)
