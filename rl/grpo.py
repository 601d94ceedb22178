"""GRPO on NDCG-style rewards over trie-constrained rollouts, with stock TRL (``GRPOTrainer(rollout_func=...)``).

    python rl/grpo.py --config configs/rl/grpo_scratch.yaml --sft_checkpoint artifacts/amazon18/sft_scratch
    python rl/grpo.py --config configs/tiny/grpo.yaml --max_steps 2           # the test-sized run

Loads any SFT checkpoint (scratch decoder, LoRA / QLoRA adapter, full model) through
``sft.modeling.load_sft_checkpoint``, builds one prompt per training row with the shared prompt builder, and trains
with TRL's GRPOTrainer: rollouts from :mod:`rl.rollouts` (``rollout_mode: beam | sample``), rewards from
:mod:`rl.rewards` (``weight_hit``, ``weight_ndcg``, ``weight_prefix``, ``weight_semantic``). Valid rows are scored
before the first step and every ``val_every`` steps; the best step (the start included) is saved. Writes the policy,
``metrics.jsonl`` (rewards per function, KL, ``frac_reward_zero_std`` = share of groups whose rewards are all equal,
``rollout/target_in_group``, tokens/s, peak RSS) and ``genrec_sft.json`` naming the parent checkpoint.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python rl/grpo.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from data_builders.cli import (UserError, check, check_choice, check_output_dir, check_range, parse_config,
                               require_dir, run_cli)
from data_builders.examples import sequence_examples
from decoding.catalogue import Catalogue
from rl.common import (RLArguments, RolloutStatsLog, check_rl_args, domain_sizes, load_policy,
                       require_world_size_one, standard_callbacks, train_and_save, training_rows)
from rl.rewards import build_reward_funcs
from rl.rollouts import MODES, ConstrainedRollouts

log = logging.getLogger("rl.grpo")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")


@dataclass
class GRPOArguments(RLArguments):
    rollout_mode: str = field(default="beam", metadata={"help": f"one of {MODES}"})
    weight_hit: float = field(default=1.0, metadata={"help": "exact hit reward"})
    weight_ndcg: float = field(default=1.0, metadata={"help": "MiniOneRec's rank-aware NDCG penalty"})
    weight_prefix: float = field(default=0.0, metadata={"help": "graded SID prefix credit"})
    weight_semantic: float = field(default=0.0, metadata={"help": "cosine of item text embeddings"})
    embeddings_dir: str = field(default="", metadata={"help": "item embeddings for weight_semantic"})
    rollout_batch_size: int = field(default=16, metadata={"help": "prompts per rollout forward"})
    inject_target: bool = field(default=False, metadata={"help": "a group without the target gets it in place of "
                                                                 "its last completion (every group teaches; that "
                                                                 "completion is not a policy sample)"})


def check_args(script: GRPOArguments, training: GRPOConfig) -> None:
    check_rl_args(script, training)
    check_choice("rollout_mode", script.rollout_mode, MODES)
    check_choice("loss_type", training.loss_type, LOSS_TYPES)
    check_range("num_generations", training.num_generations, 2)
    for name in ("weight_hit", "weight_ndcg", "weight_prefix", "weight_semantic"):
        check_range(name, getattr(script, name), 0)
    check(script.weight_hit + script.weight_ndcg + script.weight_prefix + script.weight_semantic > 0, "weight_hit",
          "every reward weight is 0: nothing to learn from")
    check(not script.weight_semantic or script.embeddings_dir, "embeddings_dir",
          "weight_semantic > 0 needs embeddings_dir (data_builders.build writes one)")
    check(training.reward_weights is None, "reward_weights", "set weight_hit / weight_ndcg / weight_prefix / "
                                                             "weight_semantic instead")
    check_range("temperature", training.temperature, 0, lo_open=True)
    check_range("epsilon", training.epsilon, 0, lo_open=True)
    check_range("rollout_batch_size", script.rollout_batch_size, 1)
    check(not training.use_vllm, "use_vllm", "the trie-constrained rollouts run in-process (rollout_func); "
                                             "vLLM serving is for decoding (decoding/vllm_adapter.py)")
    if script.embeddings_dir:
        require_dir(script.embeddings_dir, "embeddings_dir", containing="meta.json")
    check_output_dir(training.output_dir)


def build_rewards(script: GRPOArguments, catalogue: Catalogue, dataset):
    weights = {"hit": script.weight_hit, "ndcg": script.weight_ndcg, "prefix": script.weight_prefix,
               "semantic": script.weight_semantic}
    semantic = None
    if script.weight_semantic:
        from data_builders.embeddings import load_item_embeddings

        emb, _ = load_item_embeddings(script.embeddings_dir, dataset=dataset)
        semantic = (list(dataset.item_ids), emb)
    sid_tokens = {item: catalogue.sid_tokens(item) for item in catalogue.item_ids}
    return build_reward_funcs(weights, sid_tokens=sid_tokens, semantic=semantic)


def train(script: GRPOArguments, training: GRPOConfig) -> GRPOTrainer:
    require_world_size_one()
    check_args(script, training)
    def precheck(dataset):
        smallest = min(domain_sizes(dataset, script).items(), key=lambda kv: kv[1])
        check(training.num_generations <= smallest[1], "num_generations",
              f"{training.num_generations} is larger than domain {smallest[0]!r} ({smallest[1]} items): a group "
              "cannot hold that many distinct items")

    model, tokenizer, artifact, meta, dataset = load_policy(script, precheck)
    catalogue = Catalogue.from_artifact(artifact, dataset)
    rows = training_rows(script, dataset, training.seed)
    examples = sequence_examples(rows, artifact, tokenizer, max_history=script.history_len)
    domain_of, targets = {}, {}
    for ex in examples:
        domain_of.setdefault(ex["prompt"], ex["domain"])
        targets.setdefault(ex["prompt"], ex["target"])
    try:
        rollouts = ConstrainedRollouts(tokenizer, catalogue, training.num_generations, script.rollout_mode,
                                       training.temperature, domain_of, targets, script.rollout_batch_size,
                                       training.seed, inject_target=script.inject_target)
    except ValueError as e:
        raise UserError(f"`num_generations`: {e}") from None
    funcs, weights = build_rewards(script, catalogue, dataset)
    training.reward_weights = weights
    train_ds = Dataset.from_list([{"prompt": ex["prompt"], "target": ex["target"], "domain": ex["domain"]}
                                  for ex in examples])
    log.info("GRPO on %d rows (%s), %s rollouts x %d, rewards %s", len(train_ds), script.train_splits,
             script.rollout_mode, training.num_generations, [f.__name__ for f in funcs])
    callbacks, metrics_log, validation = standard_callbacks(script, training, tokenizer, catalogue, dataset,
                                                            show_progress=not training.disable_tqdm,
                                                            parent_meta=meta)
    callbacks += [RolloutStatsLog(rollouts), metrics_log]
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=training, train_dataset=train_ds,
                          processing_class=tokenizer, callbacks=callbacks, rollout_func=rollouts)
    extra = {"rollout_mode": script.rollout_mode, "inject_target": script.inject_target,
             "num_generations": training.num_generations,
             "reward_weights": dict(zip([f.__name__ for f in funcs], weights))}
    return train_and_save(trainer, validation, tokenizer, artifact, meta, script, training, "grpo", extra)


def run_grpo(argv: list[str] | None = None) -> GRPOTrainer:
    """Parse (strictly), validate, train; returns the trainer (the Python API)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    return train(*parse_config((GRPOArguments, GRPOConfig), argv))


def main(argv: list[str] | None = None) -> int:
    return run_cli(run_grpo, argv)


if __name__ == "__main__":
    sys.exit(main())
