"""Recommend items added after training (``python -m tokenization.add_items``) beside the ones the model learned.

A model trained before an item existed gives its SID almost no probability, even though the SID is made from the
item's text: the first levels place it among similar items, but its last codes (the finest level, the
de-duplication code) are a combination the model never saw, and beam search ranks by the full ``log P(SID, EOS)``.
Measured: a scratch decoder puts a new item in 0.01% of its top-10 slots and never hits one
(``benchmarks/results/cold_start.json``). TIGER (Rajput et al., 2023) reserves a share of the list for new items
that match a generated prefix; this module does the score-based version of that:

    score(new item j | q) = log P(SID(j)[:p] | prompt(q)) + offset

the model's probability of the first ``p`` SID levels (the part it can judge, :func:`decoding.score.score_items` with
``prefix_levels``), plus a constant log-probability ``offset`` (< 0) standing in for the codes it cannot. The new
items of the query's domain, so scored, are merged with the beams (scored as usual) and the top K taken: a new item
enters the list only where the model is confident about its neighbourhood. ``p`` and ``offset`` are chosen on valid
(``benchmarks/cold_start_bench.py``: a model whose SIDs and rows end before the valid period, new items = those
first seen in valid), never on test. Items sharing a p-prefix get the same score (ties: catalogue order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from decoding.catalogue import Catalogue

# Chosen on valid (benchmarks/results/cold_start.json "chosen"): the defaults of python -m decoding.recommend / serve
DEFAULT_PREFIX_LEVELS = 3  # chosen on valid (benchmarks/results/cold_start.json: best valid NDCG@10)
DEFAULT_OFFSET = -2.0


@dataclass(frozen=True)
class ColdStart:
    """The new items, the SID levels scored for them (``prefix_levels``), and the offset added to that score."""

    items: tuple[str, ...]
    prefix_levels: int
    offset: float

    def __post_init__(self) -> None:
        if self.prefix_levels < 1:
            raise ValueError(f"cold-start prefix_levels={self.prefix_levels}: must be >= 1")
        if not np.isfinite(self.offset) or self.offset > 0:
            raise ValueError(f"cold-start offset={self.offset}: a log-probability, <= 0")


def prefix_representatives(catalogue: Catalogue, items: Sequence[str], prefix_levels: int
                           ) -> dict[str | None, tuple[list[str], list[np.ndarray]]]:
    """Per domain: one item per distinct p-prefix (to score) and, per representative, the rows of the items sharing
    it (``catalogue.item_ids`` indices)."""
    by_domain: dict[str | None, dict[tuple, list[int]]] = {}
    for item in items:
        row = catalogue.row(item)
        key = tuple(catalogue.token_index[row, :prefix_levels].tolist())
        by_domain.setdefault(catalogue.domains[row], {}).setdefault(key, []).append(row)
    return {d: ([catalogue.item_ids[rows[0]] for rows in groups.values()],
                [np.array(rows) for rows in groups.values()]) for d, groups in by_domain.items()}


def new_item_scores(model, tokenizer, catalogue: Catalogue, histories: Sequence[Sequence[str]],
                    domains: Sequence[str | None], items: Sequence[str], prefix_levels: int,
                    batch_size: int = 16, max_history: int = 10) -> list[tuple[list[str], np.ndarray]]:
    """Per history ``(new items of its domain, log P(SID[:p] | prompt))`` (float64, before the offset)."""
    from decoding.score import score_items

    reps = prefix_representatives(catalogue, items, prefix_levels)
    cands = [reps.get(d, ([], []))[0] for d in domains]
    scores = score_items(model, tokenizer, catalogue, histories, cands, batch_size=batch_size,
                         max_history=max_history, prefix_levels=prefix_levels)
    out = []
    for d, s in zip(domains, scores):
        if d not in reps:
            out.append(([], np.zeros(0)))
            continue
        groups = reps[d][1]
        rows = np.concatenate(groups)
        out.append(([catalogue.item_ids[r] for r in rows], np.repeat(s, [len(g) for g in groups])))
    return out


def merge(beams: Sequence[tuple[str, float]], new: tuple[list[str], np.ndarray], offset: float, k: int
          ) -> list[tuple[str, float]]:
    """The top ``k`` of the beams (item, log P) and the new items (prefix log P + ``offset``), best first; an item in
    both keeps its higher score; equal scores: beams first, then catalogue order.

    >>> merge([("a", -1.0), ("b", -5.0)], (["n1", "n2"], np.array([-1.5, -4.0])), -1.0, 3)
    [('a', -1.0), ('n1', -2.5), ('b', -5.0)]
    """
    best: dict[str, tuple[float, int]] = {}
    for pos, (item, score) in enumerate([*beams, *zip(new[0], (new[1] + offset).tolist())]):
        if item not in best or score > best[item][0]:
            best[item] = (float(score), pos)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[1][1]))
    return [(item, score) for item, (score, _) in ranked[:k]]
