"""What the RL entry points (rl/grpo.py, rl/dpo.py) share: the script arguments every RL stage takes, loading the
SFT policy and checking it against the data, the training rows, validation with the best step kept, and saving a
checkpoint that eval's ``generative`` method and ``decoding.recommend`` load unchanged (``genrec_sft.json`` names
the parent checkpoint).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import TrainerCallback

from data_builders.cli import UserError, check, check_choice, check_range, check_seed, read_json_file, require_dir
from sft.callbacks import MetricsLog, TimeBudget, constrained_metrics, sample_indices, sample_rows

log = logging.getLogger("rl")


@dataclass
class RLArguments:
    sft_checkpoint: str = field(default="", metadata={"help": "the policy to start from: an sft/train.py (or RL) "
                                                              "output directory"})
    dataset_dir: str = field(default="artifacts/amazon18/dataset", metadata={"help": "data_builders.build output "
                                                                                     "(the checkpoint's dataset)"})
    train_splits: list[str] = field(default_factory=lambda: ["train"], metadata={"help": "rows RL trains on"})
    domains: list[str] | None = field(default=None, metadata={"help": "these domains only"})
    history_len: int | None = field(default=None, metadata={"help": "history items in the prompt (None = the "
                                                                    "checkpoint's)"})
    max_train_rows: int | None = field(default=None, metadata={"help": "a seeded sample of the training rows"})
    val_rec_rows: int = field(default=1000, metadata={"help": "valid rows scored with constrained beam search "
                                                             "before training and every val_every steps (0 = off)"})
    val_every: int = field(default=50, metadata={"help": "steps between validations; the best step (by ndcg@10, "
                                                         "the start included) is what is saved"})
    val_k: int = field(default=10, metadata={"help": "items per validation row"})
    time_budget_minutes: float | None = field(default=None, metadata={"help": "stop after this many minutes"})
    time_budget_clock: str = field(default="cpu", metadata={"help": "wall | cpu (process CPU time / threads)"})
    allow_download: bool = field(default=False, metadata={"help": "let a hub base model id be downloaded"})


def check_rl_args(script: RLArguments, training) -> None:
    """Ranges and choices, before anything loads."""
    check(script.sft_checkpoint, "sft_checkpoint", "is required (an sft/train.py output directory)")
    check(script.train_splits, "train_splits", "is empty")
    for split in script.train_splits:
        check_choice("train_splits", split, ("train", "valid"))
    if script.val_rec_rows > 0:
        check("valid" not in script.train_splits, "val_rec_rows",
              "validation rows are training rows here (train_splits has valid): set val_rec_rows: 0")
    check_range("history_len", script.history_len, 1, allow_none=True)
    check_range("max_train_rows", script.max_train_rows, 1, allow_none=True)
    check_range("val_rec_rows", script.val_rec_rows, 0)
    check_range("val_every", script.val_every, 1)
    check_range("val_k", script.val_k, 1)
    check_range("time_budget_minutes", script.time_budget_minutes, 0, lo_open=True, allow_none=True)
    check_choice("time_budget_clock", script.time_budget_clock, ("wall", "cpu"))
    check_range("per_device_train_batch_size", training.per_device_train_batch_size, 1)
    check_range("gradient_accumulation_steps", training.gradient_accumulation_steps, 1)
    check_range("learning_rate", training.learning_rate, 0, lo_open=True)
    check_range("beta", training.beta, 0)
    check(training.max_steps != 0, "max_steps", "0 trains nothing; -1 = by num_train_epochs, or a positive count")
    check(training.max_steps >= -1, "max_steps", f"{training.max_steps}: -1 or a positive count")
    check_seed("seed", training.seed)
    check(not training.bf16 or torch.cuda.is_available(), "bf16",
          "true on a machine without a GPU (bf16 is ~45x slower on CPU): set bf16: false")


def domain_sizes(dataset, script: RLArguments) -> dict[str, int]:
    """Items per domain that RL trains on (every group / set of negatives must fit the smallest)."""
    from collections import Counter

    sizes = Counter(dataset.items["domain"])
    return {d: n for d, n in sizes.items() if not script.domains or d in script.domains}


def load_policy(script: RLArguments, precheck=None):
    """``(model, tokenizer, artifact, meta, dataset)``: the SFT policy (trainable) and its dataset, checked;
    ``precheck(dataset)`` runs before the model loads."""
    from data_builders.dataset import load_rec_dataset
    from sft.modeling import load_sft_checkpoint

    path = require_dir(script.sft_checkpoint, "sft_checkpoint")
    check((path / "genrec_sft.json").is_file(), str(path), "not an SFT checkpoint (no genrec_sft.json): RL starts "
                                                           "from a model with SID tokens, written by sft/train.py")
    meta = read_json_file(path / "genrec_sft.json", "SFT checkpoint meta")
    require_dir(script.dataset_dir, "dataset_dir", containing="meta.json")
    dataset = load_rec_dataset(script.dataset_dir)
    check(meta.get("dataset_hash") in (None, dataset.dataset_hash), str(path),
          f"trained on dataset {str(meta.get('dataset_hash'))[:12]}, but dataset_dir {script.dataset_dir} is "
          f"{dataset.dataset_hash[:12]}")
    for split in script.train_splits:
        columns = set(dataset.splits[split].column_names)
        missing = sorted({"history", "target", "domain"} - columns)
        if missing:
            raise UserError(f"{script.dataset_dir} split {split}: no {missing[0]!r} column (RL rewards read the "
                            "target item from it)")
    if precheck is not None:
        precheck(dataset)
    model, tok, artifact = load_sft_checkpoint(path, allow_download=script.allow_download, trainable=True)
    if script.history_len is None:
        script.history_len = int(meta.get("history_len", 10))
    return model, tok, artifact, meta, dataset


def training_rows(script: RLArguments, dataset, seed: int) -> list[dict]:
    keep = set(script.domains) if script.domains else None
    if keep:
        have = set(dataset.items["domain"])
        check(keep <= have, "domains", f"{sorted(keep - have)} not in the dataset (it has {sorted(have)})")
    rows = [r for s in script.train_splits for r in dataset.splits[s] if keep is None or r["domain"] in keep]
    check(rows, "train_splits", f"no rows in {script.train_splits} for domains {script.domains}")
    if script.max_train_rows is not None:
        rows = sample_rows(rows, script.max_train_rows, seed)
    return rows


def validation_rows(script: RLArguments, dataset, seed: int, parent_meta: dict | None = None) -> list[dict]:
    """A seeded sample of valid rows, without the rows the parent SFT run selected its step on: the parent is the
    best of many evaluations on those, so RL steps compared there would look worse by regression to the mean."""
    if script.val_rec_rows <= 0:
        return []
    split = dataset.splits["valid"]
    used: set[int] = set()
    cfg = (parent_meta or {}).get("config", {})
    n_parent = cfg.get("script", {}).get("val_rec_rows") or 0
    if n_parent and cfg.get("training", {}).get("eval_strategy", "no") != "no":
        parent_seed = cfg.get("training", {}).get("seed", 0)  # sft/train.py: sample_rows(valid, n, seed)
        used = set(sample_indices(len(split), n_parent, parent_seed))
    rows = [split[i] for i in range(len(split)) if i not in used
            and (not script.domains or split[i]["domain"] in script.domains)]
    check(rows, "val_rec_rows", "no valid rows left after the parent's selection rows")
    return sample_rows(rows, script.val_rec_rows, seed)


class BestByValidation(TrainerCallback):
    """Constrained HR/NDCG on fixed valid rows before the first step and every ``every`` steps; at the end the
    trainable weights of the best evaluation (by ``metric``, ties keep the earlier one — the SFT start included) are
    put back, so the saved policy is the best step on valid, never chosen on test."""

    def __init__(self, tokenizer, catalogue, rows: list[dict], every: int, k: int, history_len: int,
                 metrics_log: MetricsLog, metric: str = "ndcg@10"):
        self.tokenizer, self.catalogue, self.rows, self.every = tokenizer, catalogue, rows, every
        self.k, self.history_len, self.metrics_log, self.metric = k, history_len, metrics_log, metric
        self.best: tuple[float, int] | None = None
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.curve: list[dict] = []

    def _evaluate(self, model, step: int) -> None:
        t0 = time.perf_counter()
        found = constrained_metrics(model, self.tokenizer, self.catalogue, self.rows, k=self.k,
                                    history_len=self.history_len)
        self.curve.append({"step": step, **found})
        self.metrics_log.write({"step": step, **{f"valid_{k}": v for k, v in found.items()}})
        log.info("step %d: valid %s (%d rows, %.1f s)", step, {k: round(v, 4) for k, v in found.items()},
                 len(self.rows), time.perf_counter() - t0)
        if self.best is None or found[self.metric] > self.best[0]:
            self.best = (found[self.metric], step)
            self.snapshot = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.metrics_log.on_train_begin(args, state, control)  # reset the log before the first record
        self._evaluate(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._evaluate(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.curve or self.curve[-1]["step"] != state.global_step:
            self._evaluate(model, state.global_step)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in self.snapshot:
                    p.copy_(self.snapshot[n])
        log.info("kept step %d (valid %s %.4f)", self.best[1], self.metric, self.best[0])


class RolloutStatsLog(TrainerCallback):
    """Adds the rollout's statistics (``rollout/target_in_group`` ...) to each log record (before MetricsLog)."""

    def __init__(self, rollouts):
        self.rollouts = rollouts

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs.update({f"rollout/{k}": round(v, 4) for k, v in self.rollouts.pop_stats().items()})


def standard_callbacks(script: RLArguments, training, tokenizer, catalogue, dataset, show_progress: bool = True,
                       parent_meta: dict | None = None):
    """(callbacks, metrics_log, validation or None) in the order they must run."""
    metrics_log = MetricsLog(training.output_dir)
    callbacks: list = []
    if script.time_budget_minutes is not None:
        callbacks.append(TimeBudget(script.time_budget_minutes, script.time_budget_clock,
                                    show_progress=show_progress, desc="RL"))
    validation = None
    rows = validation_rows(script, dataset, training.seed, parent_meta)
    if rows:
        validation = BestByValidation(tokenizer, catalogue, rows, script.val_every, script.val_k,
                                      script.history_len, metrics_log)
        callbacks.append(validation)
    return callbacks, metrics_log, validation


def train_and_save(trainer, validation, tokenizer, artifact, parent_meta: dict, script: RLArguments, training,
                   stage: str, extra: dict):
    """Train (a time budget shows its own bar instead of the step total), put back the best valid step, save."""
    if script.time_budget_minutes is not None:
        from transformers.trainer_callback import ProgressCallback

        trainer.remove_callback(ProgressCallback)
    trainer.train()
    extra = {**extra, "steps": trainer.state.global_step}
    if validation is not None:
        extra.update(best_step=validation.best[1], valid_curve=validation.curve)
    save_policy(trainer, tokenizer, artifact, parent_meta, script, training, stage, extra)
    return trainer


def save_policy(trainer, tokenizer, artifact, parent_meta: dict, script: RLArguments, training, stage: str,
                extra: dict) -> None:
    """Model (or adapter + SID rows), tokenizer and ``genrec_sft.json`` (parent's fields + the RL stage)."""
    from sft.modeling import save_sid_rows, write_checkpoint_meta

    out = training.output_dir
    trainer.save_model(out)
    if not trainer.is_world_process_zero():
        return
    if parent_meta["mode"] in ("lora", "qlora"):
        first, last = parent_meta["vocab"]["first_token_id"], parent_meta["vocab"]["last_token_id"]
        save_sid_rows(trainer.model, list(range(first, last + 1)), out)
    tokenizer.save_pretrained(out)
    keep = ("model", "mode", "num_layers", "sid_dir", "sid_hash", "dataset_hash", "vocab")
    write_checkpoint_meta(out, {
        **{k: parent_meta.get(k) for k in keep}, "history_len": script.history_len,
        "stage": stage, "parent_checkpoint": str(script.sft_checkpoint),
        "parent_stage": parent_meta.get("stage", "sft"), **extra,
        "config": {"script": asdict(script), "training": training.to_dict(),
                   "sft": parent_meta.get("config", {})},
        "command": " ".join(sys.orig_argv),
    })


def require_world_size_one() -> None:
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        raise UserError("multi-process RL on CPU is not supported; run one process")
