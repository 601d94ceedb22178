"""Reward functions for GRPO over trie-constrained rollouts: plain functions, one reward per completion.

Every function has TRL's reward signature ``reward(completions, completion_ids, **columns) -> list[float]``. The
target item comes from the dataset column ``target`` (never from the prompt); the rollout (:mod:`rl.rollouts`) adds
per completion ``item_id`` (the generated item), ``group_id`` (which prompt's group it belongs to) and ``group_rank``
(its rank in the group by sequence log-prob under the policy, 0 = best). Groups are the ``num_generations``
consecutive completions of one prompt.

* :func:`hit_reward` — 1 if the generated item is the target, else 0.
* :func:`ndcg_rank_reward` — MiniOneRec's rank-aware penalty: in a group of G ordered by score, a wrong item at rank
  i (1-based) gets ``-(1/log2(i+1)) / sum_{j=1..G} 1/log2(j+1)``, the target gets 0, and a group that does not
  contain the target gets 0 everywhere (its ordering says nothing about the target). With :func:`hit_reward` it
  rewards putting the target first *and* pushing the wrong items that outrank it down.
* :func:`make_prefix_reward` — graded credit: (number of leading SID levels equal to the target's) / L, so a wrong
  item in the right category still earns something (denser than the exact hit).
* :func:`make_semantic_reward` — cosine similarity of the item's and the target's text embeddings.

Weights come from ``GRPOConfig.reward_weights`` (one per function, in :data:`REWARD_NAMES` order as chosen); TRL
logs each function's mean and std per step (``rewards/<name>/mean``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Mapping, Sequence

import numpy as np

REWARD_NAMES = ("hit", "ndcg", "prefix", "semantic")


def hit_reward(completions: Sequence, completion_ids: Sequence, *, target: Sequence[str],
               item_id: Sequence[str], **_) -> list[float]:
    """1.0 where the generated item is the row's target item, else 0.0."""
    _check_lengths(completions, target=target, item_id=item_id)
    return [1.0 if item == want else 0.0 for item, want in zip(item_id, target)]


def ndcg_penalties(group_size: int) -> np.ndarray:
    """[G] the penalty of a wrong item at each rank (0-based): -(1/log2(i+2)) / sum_j 1/log2(j+2)."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    discounts = 1.0 / np.log2(np.arange(group_size) + 2.0)
    return -discounts / discounts.sum()


def ndcg_rank_reward(completions: Sequence, completion_ids: Sequence, *, target: Sequence[str],
                     item_id: Sequence[str], group_id: Sequence[int], group_rank: Sequence[int], **_) -> list[float]:
    """MiniOneRec's rank-aware reward (module docstring): 0 for the target and for every member of a group without
    the target; a wrong item at 0-based rank r of a group of G (ranked by the policy's sequence log-prob) gets
    :func:`ndcg_penalties` (G)[r]."""
    _check_lengths(completions, target=target, item_id=item_id, group_id=group_id, group_rank=group_rank)
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group_id):
        members[g].append(i)
    out = [0.0] * len(completions)
    for idx in members.values():
        if not any(item_id[i] == target[i] for i in idx):
            continue
        penalty = ndcg_penalties(len(idx))
        for i in idx:
            rank = int(group_rank[i])
            if not 0 <= rank < len(idx):
                raise ValueError(f"group_rank {rank} outside a group of {len(idx)}")
            out[i] = 0.0 if item_id[i] == target[i] else float(penalty[rank])
    return out


def make_prefix_reward(sid_tokens: Mapping[str, Sequence[str]]) -> Callable[..., list[float]]:
    """Graded prefix credit from ``{item_id: [SID tokens]}``: matched leading levels / L (1.0 = the target)."""

    def prefix_reward(completions, completion_ids, *, target, item_id, **_) -> list[float]:
        _check_lengths(completions, target=target, item_id=item_id)
        out = []
        for item, want in zip(item_id, target):
            got, ref = sid_tokens[item], sid_tokens[want]
            matched = 0
            for a, b in zip(got, ref):
                if a != b:
                    break
                matched += 1
            out.append(matched / len(ref))
        return out

    return prefix_reward


def make_semantic_reward(item_ids: Sequence[str], embeddings: np.ndarray) -> Callable[..., list[float]]:
    """Cosine similarity of the generated item's and the target's vectors (``embeddings[i]`` for ``item_ids[i]``)."""
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(item_ids):
        raise ValueError(f"embeddings must be [{len(item_ids)}, d], got {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    row = {item: i for i, item in enumerate(item_ids)}

    def semantic_reward(completions, completion_ids, *, target, item_id, **_) -> list[float]:
        _check_lengths(completions, target=target, item_id=item_id)
        a = vectors[[row[i] for i in item_id]]
        b = vectors[[row[i] for i in target]]
        return [float(x) for x in (a * b).sum(1)]

    return semantic_reward


def build_reward_funcs(weights: Mapping[str, float], sid_tokens: Mapping[str, Sequence[str]] | None = None,
                       semantic: tuple[Sequence[str], np.ndarray] | None = None
                       ) -> tuple[list[Callable], list[float]]:
    """The reward functions with a non-zero weight, in :data:`REWARD_NAMES` order, and their weights."""
    unknown = sorted(set(weights) - set(REWARD_NAMES))
    if unknown:
        raise ValueError(f"unknown reward {unknown[0]!r}; choose from {REWARD_NAMES}")
    funcs, used = [], []
    for name in REWARD_NAMES:
        w = float(weights.get(name, 0.0))
        if w == 0.0:
            continue
        if not math.isfinite(w):
            raise ValueError(f"reward weight {name} = {w} is not finite")
        if name == "hit":
            funcs.append(hit_reward)
        elif name == "ndcg":
            funcs.append(ndcg_rank_reward)
        elif name == "prefix":
            if sid_tokens is None:
                raise ValueError("the prefix reward needs the SID tokens of every item")
            funcs.append(make_prefix_reward(sid_tokens))
        else:
            if semantic is None:
                raise ValueError("the semantic reward needs item embeddings")
            funcs.append(make_semantic_reward(*semantic))
        used.append(w)
    if not funcs:
        raise ValueError(f"every reward weight is 0 ({', '.join(REWARD_NAMES)}): nothing to learn from")
    return funcs, used


def _check_lengths(completions: Sequence, **columns: Sequence) -> None:
    for name, values in columns.items():
        if values is None:
            raise ValueError(f"reward needs the column {name!r} (the dataset's target column; the rollout adds "
                             "item_id, group_id and group_rank)")
        if len(values) != len(completions):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(completions)} completions")
