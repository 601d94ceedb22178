"""Trainer callbacks: constrained-decoding validation and a metrics log (tokens/s, peak memory).

:class:`ConstrainedValidation` runs trie-constrained beam search (:func:`decoding.recommend`) on a fixed validation
sample at every evaluation and adds ``eval_hr@10``, ``eval_ndcg@10``, ``eval_invalid_rate`` to the evaluation
metrics, so ``metric_for_best_model: ndcg@10`` keeps the best checkpoint by what the product is judged on.
:class:`MetricsLog` appends every log record, plus tokens/s and peak RSS, to ``<output_dir>/metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from eval.memory import peak_rss_mb

log = logging.getLogger(__name__)


def sample_indices(total: int, n: int, seed: int) -> list[int]:
    """Sorted indices of a fixed, seeded sample of ``n`` of ``total`` rows (all when ``n`` is larger)."""
    return sorted(random.Random(seed).sample(range(total), min(n, total)))


def sample_rows(split, n: int, seed: int) -> list[dict]:
    """A fixed, seeded sample of ``n`` rows of a dataset split (all rows when ``n`` is larger)."""
    return [split[i] for i in sample_indices(len(split), n, seed)]


VALIDATION_METRICS = ("hr@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "invalid_rate")  # what it adds (eval_ prefix)


def constrained_metrics(model, tokenizer, catalogue, rows: list[dict], k: int = 10, num_beams: int | None = None,
                        history_len: int = 10, batch_size: int = 16) -> dict[str, float]:
    """HR@1/5/10, NDCG@5/10 and the invalid rate of constrained beam search on ``rows`` (dataset rows)."""
    from decoding.recommend import recommend
    from eval.metrics import invalid_rate, ranking_metrics, target_ranks

    was_training = model.training
    model.eval()
    with torch.no_grad():
        recs = recommend(model, tokenizer, catalogue, [list(r["history"]) for r in rows], k=k,
                         domains=[r["domain"] for r in rows], num_beams=num_beams, batch_size=batch_size,
                         max_history=history_len, show_progress=False)
    model.train(was_training)
    ranked = [[item for item, _ in rec] for rec in recs]
    metrics = ranking_metrics(target_ranks(ranked, [r["target"] for r in rows]), ks=(1, 5, 10))
    metrics = {name: value for name, value in metrics.items() if name in VALIDATION_METRICS}
    metrics["invalid_rate"] = invalid_rate(ranked, set(catalogue.item_ids), k)
    return metrics


class ConstrainedValidation(TrainerCallback):
    """At each evaluation, add constrained-decoding HR/NDCG on a fixed validation sample to the eval metrics."""

    def __init__(self, tokenizer, catalogue, rows: list[dict], k: int = 10, num_beams: int | None = None,
                 history_len: int = 10):
        self.tokenizer, self.catalogue, self.rows = tokenizer, catalogue, rows
        self.k, self.num_beams, self.history_len = k, num_beams, history_len

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        t0 = time.perf_counter()
        found = constrained_metrics(model, self.tokenizer, self.catalogue, self.rows, self.k, self.num_beams,
                                    self.history_len)
        found = {f"eval_{name}": value for name, value in found.items()}
        if metrics is not None:
            metrics.update(found)  # the Trainer reads metric_for_best_model from this dict
        log.info("step %d: constrained validation on %d rows (%.1f s): %s", state.global_step, len(self.rows),
                 time.perf_counter() - t0, {k: round(v, 4) for k, v in found.items()})
        state.log_history.append({**found, "step": state.global_step})


class MetricsLog(TrainerCallback):
    """Append each log record + ``tokens_per_s`` and ``peak_rss_mb`` to ``<output_dir>/metrics.jsonl``."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.last: tuple[float, float] | None = None
        self.started = False  # the log is reset once per run, however many callbacks ask (rl/common.py)

    def on_train_begin(self, args, state, control, **kwargs):
        """A resumed run keeps the records up to its checkpoint's step and rewrites the rest (they would otherwise
        appear twice); a fresh run into an existing directory starts a new log."""
        if self.started:
            return
        self.started = True
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: dropped with what follows
                break
            if state.global_step and record.get("step", 0) <= state.global_step:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        tmp.replace(self.path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or logs is None:
            return
        record = {"step": state.global_step, **logs, "peak_rss_mb": round(peak_rss_mb(), 1)}
        now, tokens = time.perf_counter(), logs.get("num_tokens")
        if tokens is not None:
            if self.last is not None and now > self.last[0]:
                record["tokens_per_s"] = round((float(tokens) - self.last[1]) / (now - self.last[0]), 1)
            self.last = (now, float(tokens))
        self.write(record)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """The constrained-decoding metrics join the eval dict after the Trainer logged it: record them here (this
        callback must come after :class:`ConstrainedValidation` in the callback list)."""
        extra = {k: v for k, v in (metrics or {}).items() if k.startswith("eval_") and ("@" in k or "invalid" in k)}
        if state.is_world_process_zero and extra:
            self.write({"step": state.global_step, **extra, "peak_rss_mb": round(peak_rss_mb(), 1)})

    def write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")


class TimeBudget(TrainerCallback):
    """Stop training (with a final evaluation and save) once ``minutes`` have passed — the fair way to compare
    training options on a CPU: same budget, compare validation NDCG@10.

    ``clock="wall"`` counts wall time; ``clock="cpu"`` counts this process's CPU time divided by its torch thread
    count, which equals wall time on an idle machine but is not eaten by other jobs on shared cores (use it to
    compare options measured one after another on a busy machine).
    """

    CLOCKS = ("wall", "cpu")

    def __init__(self, minutes: float, clock: str = "wall", show_progress: bool = False, desc: str = "SFT"):
        if clock not in self.CLOCKS:
            raise ValueError(f"time budget clock {clock!r}; choose from {self.CLOCKS}")
        if minutes <= 0:
            raise ValueError(f"time budget must be positive, got {minutes} minutes")
        self.seconds, self.clock = minutes * 60, clock
        self.start: float | None = None
        self.show_progress, self.bar, self.desc = show_progress, None, desc

    def now(self) -> float:
        if self.clock == "wall":
            return time.perf_counter()
        return time.process_time() / max(1, torch.get_num_threads())

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.now()
        if self.show_progress and state.is_world_process_zero:
            from tqdm.auto import tqdm

            # The bar counts the budget, not the step total of num_train_epochs (which a budget cuts short).
            self.bar = tqdm(total=round(self.seconds / 60, 2), unit="min",
                            desc=f"{self.desc} ({self.clock} time budget)",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} min {postfix}")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.n = round(min(self.now() - self.start, self.seconds) / 60, 2)
            self.bar.set_postfix_str(f"step {state.global_step}/{state.max_steps}", refresh=True)
        if self.start is not None and self.now() - self.start >= self.seconds:
            log.info("time budget of %.1f %s minutes reached at step %d", self.seconds / 60, self.clock,
                     state.global_step)
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
