"""Prompt/completion datasets for SFT, DPO, GRPO and evaluation, built from a dataset + a SID artifact.

Every prompt comes from :mod:`data_builders.prompts`, so the next-item prompt for a history is identical in every
stage. Each example also carries the columns later stages need: ``task``, ``domain``, ``user_id``, ``target``
(the target item id — RL rewards read it from this column, never by looking the prompt up) and ``history``.

Task weights are multiplicities: ``seq_sid: 1.0`` uses every interaction row once, ``title2sid: 0.5`` a seeded half
of the items, ``2.0`` everything twice. Rows are shuffled with ``seed``.
"""

from __future__ import annotations

import random
from typing import Any, Iterable, Mapping, Sequence

from data_builders.prompts import DEFAULT_MAX_HISTORY, TASKS, build_example

DEFAULT_TASK_WEIGHTS = {"seq_sid": 1.0, "title2sid": 0.0, "sid2title": 0.0, "seq_title": 0.0}


def _take(n_total: int, weight: float, rng: random.Random) -> list[int]:
    """Indices for a task with multiplicity ``weight``: floor(weight) full passes + a seeded partial pass."""
    if weight < 0:
        raise ValueError(f"task weights must be >= 0, got {weight}")
    whole, frac = int(weight), weight - int(weight)
    idx = list(range(n_total)) * whole
    return idx + sorted(rng.sample(range(n_total), round(frac * n_total)))


def sequence_examples(rows: Iterable[Mapping], artifact, tokenizer, task: str = "seq_sid",
                      titles: Mapping[str, str] | None = None, max_history: int = DEFAULT_MAX_HISTORY) -> list[dict]:
    """One example per interaction row (``seq_sid`` or ``seq_title``); ``rows`` are dataset rows (dicts)."""
    out = []
    for row in rows:
        history = list(row["history"])[-max_history:]
        kwargs: dict[str, Any] = {"history_sids": [artifact.sid_string(i) for i in history]}
        if task == "seq_title":
            kwargs = {"history_titles": [titles[i] for i in history]}
        ex = build_example(task, tokenizer, sid=artifact.sid_string(row["target"]), max_history=max_history, **kwargs)
        out.append({**ex, "task": task, "domain": row["domain"], "user_id": row["user_id"],
                    "target": row["target"], "history": history})
    return out


def item_examples(items: Iterable[Mapping], artifact, tokenizer, task: str) -> list[dict]:
    """One alignment example (``title2sid`` / ``sid2title``) per item with a non-empty title."""
    out = []
    for item in items:
        if not item["title"]:
            continue
        ex = build_example(task, tokenizer, sid=artifact.sid_string(item["item_id"]), title=item["title"])
        out.append({**ex, "task": task, "domain": item["domain"], "user_id": "", "target": item["item_id"],
                    "history": []})
    return out


def build_examples(dataset, artifact, tokenizer, splits: Sequence[str] = ("train",),
                   task_weights: Mapping[str, float] | None = None, max_history: int = DEFAULT_MAX_HISTORY,
                   domains: Sequence[str] | None = None, seed: int = 0):
    """A shuffled ``datasets.Dataset`` of prompt/completion examples mixing the weighted tasks.

    ``domains`` restricts rows and items to those domains (per-domain adapters train on their own rows).
    """
    import datasets

    weights = {**DEFAULT_TASK_WEIGHTS, **(task_weights or {})}
    unknown = set(weights) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; expected some of {TASKS}")
    keep = (lambda d: True) if domains is None else (lambda d: d in set(domains))  # noqa: E731
    rows = [r for s in splits for r in dataset.splits[s] if keep(r["domain"])]
    items = [i for i in dataset.items if keep(i["domain"])]
    titles = {i["item_id"]: i["title"] for i in items}
    rng = random.Random(seed)
    examples: list[dict] = []
    for task, weight in sorted(weights.items()):
        if weight == 0:
            continue
        pool = (sequence_examples(rows, artifact, tokenizer, task, titles, max_history) if task.startswith("seq")
                else item_examples(items, artifact, tokenizer, task))
        examples += [pool[i] for i in _take(len(pool), weight, rng)]
    if not examples:
        raise ValueError(f"no training examples: splits {list(splits)}, domains {domains}, weights {weights}")
    rng.shuffle(examples)
    return datasets.Dataset.from_list(examples)
