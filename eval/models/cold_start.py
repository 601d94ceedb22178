"""Method ``generative_cold``: the generative model with the items added since training merged in by their SID prefix
(decoding/cold_start.py). Needs ``generative_sid_dir`` (the extended SID artifact: the new items are the ones after
the trained artifact's). Several ``cold_prefix_levels`` / ``cold_offsets`` give one row per pair,
``generative_cold[p=2,c=-4]``, sharing one fit, one beam search and one prefix pass per query (chosen on valid)."""

from __future__ import annotations

from itertools import product
from typing import Any, Sequence

import numpy as np

from eval.recommenders import Query


class ColdStartRecommender:
    def __init__(self, generative: Any, prefix_levels: Sequence[int], offsets: Sequence[float],
                 name: str = "generative_cold"):
        from decoding.cold_start import ColdStart

        self.pairs = [(int(p), float(c)) for p, c in product(prefix_levels, offsets)]
        if not self.pairs or len(set(self.pairs)) != len(self.pairs):
            raise ValueError(f"cold_prefix_levels {list(prefix_levels)} x cold_offsets {list(offsets)}: need at "
                             "least one pair and no repeats")
        for p, c in self.pairs:
            ColdStart((), p, c)  # checks the ranges
        self.generative, self.name = generative, name
        self.shared = len(self.pairs) > 1
        self._cache: dict[tuple[Query, int], tuple[list, dict[int, tuple[list[str], np.ndarray]]]] = {}
        self.train_log: dict[str, Any] = {}

    def rows(self) -> list[Any]:
        if not self.shared:
            return [self]
        names = [f"{self.name}[p={p},c={c:g}]" for p, c in self.pairs]
        return [ColdRow(self, p, c, n, None if i == 0 else names[0])
                for i, ((p, c), n) in enumerate(zip(self.pairs, names))]

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        if self.generative.model is None:
            self.generative.fit(dataset, train_rows, embeddings)
            self._cache.clear()
        new = self.generative.new_items
        if not new:
            raise ValueError("generative_cold: generative_sid_dir adds no items to the model's SID artifact "
                             "(python -m tokenization.add_items makes a version that does)")
        levels = self.generative.catalogue.levels
        bad = [p for p, _ in self.pairs if p > levels]
        if bad:
            raise ValueError(f"cold_prefix_levels {bad}: the SIDs have {levels} levels")
        self.train_log = {"generative_checkpoint": self.generative.checkpoint, "new_items": len(new),
                          "pairs": [list(x) for x in self.pairs]}

    def parts(self, queries: Sequence[Query], k: int, use_cache: bool = False):
        from decoding.cold_start import new_item_scores

        out = [self._cache.get((q, k)) if use_cache else None for q in queries]
        todo = [b for b, c in enumerate(out) if c is None]
        if todo:
            g = self.generative
            batch = [queries[b] for b in todo]
            items, scores = g.recommend_scored(batch, k)
            new = {p: new_item_scores(g.model, g.tokenizer, g.catalogue, [list(q.history) for q in batch],
                                      [q.domain for q in batch], g.new_items, p, g.batch_size, g.history_len)
                   for p in sorted({p for p, _ in self.pairs})}
            for j, (b, q) in enumerate(zip(todo, batch)):
                out[b] = (list(zip(items[j], scores[j].tolist())), {p: v[j] for p, v in new.items()})
                if self.shared:
                    self._cache.setdefault((q, k), out[b])
        return out

    def rank(self, parts, p: int, c: float, k: int) -> list[list[str]]:
        from decoding.cold_start import merge

        return [[i for i, _ in merge(beams, new[p], c, k)] for beams, new in parts]

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        if self.shared:
            raise RuntimeError(f"{self.name} has {len(self.pairs)} (p, c) pairs: evaluate its rows()")
        return self.rank(self.parts(queries, k), *self.pairs[0], k)


class ColdRow:
    """One (prefix_levels, offset) of a sweep, sharing its parent's fit, beams and prefix scores."""

    def __init__(self, parent: ColdStartRecommender, p: int, c: float, name: str, latency_of: str | None):
        self.parent, self.p, self.c, self.name, self.latency_of = parent, p, c, name, latency_of

    @property
    def train_log(self) -> dict[str, Any]:
        return {**self.parent.train_log, "prefix_levels": self.p, "offset": self.c}

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        self.parent.fit(dataset, train_rows, embeddings)

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        parts = self.parent.parts(queries, k, use_cache=self.latency_of is not None)
        return self.parent.rank(parts, self.p, self.c, k)
