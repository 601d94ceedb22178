"""Prompt/completion datasets for SFT, DPO, GRPO and evaluation, built from a dataset + a SID artifact.

Every prompt comes from :mod:`data_builders.prompts`, so the next-item prompt for a history is identical in every
stage. Each example also carries the columns later stages need: ``task``, ``domain``, ``user_id``, ``target``
(the target item id — RL rewards read it from this column, never by looking the prompt up) and ``history``.

Task weights are multiplicities: ``seq_sid: 1.0`` uses every interaction row once, ``title2sid: 0.5`` a seeded half
of the items, ``2.0`` everything twice. Rows are shuffled with ``seed``.
"""

from __future__ import annotations

from data_builders.cli import UserError

import random
from typing import Any, Iterable, Mapping, Sequence

from data_builders.prompts import DEFAULT_MAX_HISTORY, TASKS, build_example

DEFAULT_TASK_WEIGHTS = {"seq_sid": 1.0, "title2sid": 0.0, "sid2title": 0.0, "seq_title": 0.0}


def _take(n_total: int, weight: float, rng: random.Random) -> list[int]:
    """Indices for a task with multiplicity ``weight``: floor(weight) full passes + a seeded partial pass."""
    if weight < 0:
        raise UserError(f"task weights must be >= 0, got {weight}")
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
        raise UserError(f"unknown task(s) {sorted(unknown)}; expected some of {TASKS}")
    keep = (lambda d: True) if domains is None else (lambda d: d in set(domains))  # noqa: E731
    rows = [r for s in splits for r in dataset.splits[s] if keep(r["domain"])]
    items = [i for i in dataset.items if keep(i["domain"])]
    if (getattr(artifact, "meta", None) or {}).get("item_subset", "all") != "all":
        # SIDs fitted on the items of earlier periods only (tokenization.build items:): later rows and items have
        # none yet, and are left out here (sft/train.py checks that every training row has its SIDs)
        has = set(artifact.item_ids)
        rows = [r for r in rows if r["target"] in has and all(i in has for i in r["history"])]
        items = [i for i in items if i["item_id"] in has]
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
        raise UserError(f"no training examples: splits {list(splits)}, domains {domains}, weights {weights}")
    rng.shuffle(examples)
    return datasets.Dataset.from_list(examples)


def packed_sequence_examples(rows: Iterable[Mapping], artifact, tokenizer, max_history: int = DEFAULT_MAX_HISTORY,
                             seed: int = 0):
    """``seq_sid`` for a SID-only tokenizer with every window of a user in one sequence: the same loss, fewer tokens.

    A window (history h, target t) is the item sequence ``h[-max_history:] + [t]``; the training windows of a user
    are mostly prefixes of each other (the rebuilt training windows are every prefix of one history). Each window is
    assigned to one longer sequence of the same user that starts with it, and its target gets the loss there; a
    sequence ``s_1 <|sep|> s_2 <|sep|> ... s_n <eos>`` then trains every assigned target with exactly the context
    its own prompt would give (``s_1<|sep|>...s_{j-1}<|sep|>``, causal attention), once. Labels are the target's SID
    tokens (and ``<eos>`` after the last one); separators and unassigned items carry no loss. So a pass over the
    packed sequences is a pass over the windows at a fraction of the tokens (~1/3 on the embedded training split).

    Returns a shuffled ``datasets.Dataset`` with ``input_ids`` and ``labels`` (TRL's pre-tokenised format) plus
    ``windows`` (targets trained per sequence).
    """
    import datasets

    from data_builders.prompts import SID_SEP, is_sid_only

    if not is_sid_only(tokenizer):
        raise UserError("sequence packing needs a SID-only tokenizer (model_name_or_path: scratch): other prompts "
                         "wrap the history in text, so one sequence cannot hold several prompts")
    sep, eos = tokenizer.convert_tokens_to_ids(SID_SEP), tokenizer.eos_token_id
    by_user: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for row in rows:
        seq = tuple(list(row["history"])[-max_history:]) + (row["target"],)
        by_user.setdefault((row["domain"], row["user_id"]), []).append(seq)
    token_cache: dict[str, list[int]] = {}

    def tokens(item: str) -> list[int]:
        if item not in token_cache:
            token_cache[item] = tokenizer.convert_tokens_to_ids(artifact.sid_tokens(item))
        return token_cache[item]

    out = []
    for key in sorted(by_user):
        kept: list[tuple[tuple[str, ...], set[int]]] = []  # (sequence, positions whose target is trained)
        for seq in sorted(by_user[key], key=len, reverse=True):
            home = next((k for k in kept if k[0][:len(seq)] == seq), None)
            if home is None:
                kept.append((seq, {len(seq) - 1}))
            else:
                home[1].add(len(seq) - 1)  # duplicates of one window collapse here: trained once, like a set
        for seq, positions in kept:
            ids: list[int] = []
            labels: list[int] = []
            for j, item in enumerate(seq):
                sid = tokens(item)
                ids += sid
                labels += sid if j in positions else [-100] * len(sid)
                last = j == len(seq) - 1
                ids.append(eos if last else sep)
                labels.append(eos if last and j in positions else -100)
            out.append({"input_ids": ids, "labels": labels, "windows": len(positions)})
    random.Random(seed).shuffle(out)
    return datasets.Dataset.from_list(out)
