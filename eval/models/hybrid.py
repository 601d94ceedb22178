"""Generative retrieval, then re-ranking (LIGER / SpecGR style): method ``generative_rerank``.

For a query q the generative model's trie beam search (eval/models/generative.py; one decode with
``num_beams = max(num_candidates, k)``, capped at the smallest domain of the batch) gives the candidates c_1..c_N,
best first, with ``g_i = log P(SID(c_i), EOS | prompt(q))``. A trained scorer of this stack gives
``s_i = score_items(q, c_i)``, the score it ranks by itself (SASRec h_last · e_i, STARS [h, −α] · [e_i, log p̃_i],
Mini-XPERT q · v_i). The fused score is

    f_i = w · z(g)_i + (1 − w) · z(s)_i,    z(x)_i = (x_i − mean(x)) / std(x),

mean and (population, ddof 0) std taken over the query's N candidates, and z(x) = 0 when std(x) = 0. The list is the
candidates sorted by f descending, equal f in generative order, cut to k. So w = 1 is exactly the generative ranking
of the N candidates and w = 0 the scorer's ranking restricted to them; every item returned is a generative candidate.
(The standalone ``generative`` row decodes with ``generative_num_beams``, default k beams: fewer beams can find a
different top k, so it equals the w = 1 row only when both decode with the same width.)

Union of both retrievers (``scorer_candidates = M > 0``, LIGER's candidate union): the scorer's own top M items of
the query (its ``recommend``, full catalogue of the domain) join the N beams; a joined item's g_i is its exact
``log P(SID, EOS | prompt)`` by a teacher-forced pass (:func:`decoding.score.score_items`, the quantity beam search
ranks by), and z() runs over the union. The list then holds only items one of the two models proposed, and w = 0 is
the scorer's own top k (its top M are all candidates), so a sweep over w can only meet or beat the scorer alone on
the rows it is chosen on.

Choosing w on valid: list several weights (``rerank_weights: [0, 0.25, 0.5, 0.75, 1]``) and evaluate ``split: valid``
with ``train_splits: [train]``; each weight is a row ``generative_rerank[w=0.25]`` and all rows share one fit, one
beam search and one scorer pass per query (the first row computes, the others read its cache; their latency is the
first row's). Then evaluate the test split with the chosen single weight (row ``generative_rerank``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np

from eval.recommenders import Query

FUSIONS = ("zscore",)


class Scorer(Protocol):
    """A fitted model that scores given items (SASRecRecommender, STARSRecommender, DenseRecommender)."""

    name: str

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None: ...

    def score_items(self, queries: Sequence[Query], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]: ...

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]: ...  # used when scorer_candidates > 0


def zscore(x: np.ndarray) -> np.ndarray:
    """(x − mean) / std over the array (float64, population std); zeros when std = 0.

    >>> zscore(np.array([1.0, 3.0])).tolist(), zscore(np.array([2.0, 2.0])).tolist()
    ([-1.0, 1.0], [0.0, 0.0])
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"cannot z-normalise non-finite scores {x[~np.isfinite(x)][:5].tolist()}")
    std = x.std() if len(x) else 0.0
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def fused_scores(generative: np.ndarray, scorer: np.ndarray, weight: float) -> np.ndarray:
    """f = w · z(generative) + (1 − w) · z(scorer), over one query's candidates."""
    if len(generative) != len(scorer):
        raise ValueError(f"{len(generative)} generative scores but {len(scorer)} scorer scores")
    return weight * zscore(generative) + (1.0 - weight) * zscore(scorer)


def fused_order(generative: np.ndarray, scorer: np.ndarray, weight: float) -> np.ndarray:
    """Candidate positions by fused score, descending; equal scores keep the generative order (position)."""
    fused = fused_scores(generative, scorer, weight)
    return np.lexsort((np.arange(len(fused)), -fused))


@dataclass(frozen=True)
class Candidates:
    """One query's generative candidates (best first) with both scores."""

    items: tuple[str, ...]
    generative: np.ndarray  # [N] log P(SID, EOS | prompt)
    scorer: np.ndarray  # [N] the scorer's scores


class GenerativeRerankRecommender:
    """Top-N generative candidates re-ranked by the fusion in the module docstring.

    ``generative``: a :class:`~eval.models.generative.GenerativeRecommender` (or anything with ``fit`` and
    ``recommend_scored(queries, k, num_beams) -> (items, scores)``); ``scorer``: anything with ``fit`` and
    ``score_items``. ``weights``: one weight w in [0, 1] (this object is the row ``name``) or several (``rows()``
    gives one row per weight, ``name[w=…]``, sharing the fit, the decode and the scorer pass).
    """

    def __init__(self, generative: Any, scorer: Scorer, weights: Sequence[float], num_candidates: int = 50,
                 fusion: str = "zscore", name: str = "generative_rerank", scorer_candidates: int = 0):
        weights = [float(w) for w in weights]
        check_weights(weights)
        if num_candidates < 1:
            raise ValueError(f"num_candidates={num_candidates}: need at least 1")
        if scorer_candidates < 0:
            raise ValueError(f"scorer_candidates={scorer_candidates}: 0 (beams only) or the scorer's top M to join")
        self.scorer_candidates = scorer_candidates
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}; choose from {FUSIONS}")
        self.generative, self.scorer, self.weights = generative, scorer, weights
        self.num_candidates, self.fusion, self.name = num_candidates, fusion, name
        self.shared = len(weights) > 1  # several rows read one cache
        self._cache: dict[tuple[Query, int], Candidates] = {}
        self._fitted_on: tuple | None = None
        self.train_log: dict[str, Any] = {}

    def rows(self) -> list[Any]:
        """The recommenders to evaluate: ``[self]`` for one weight, else one :class:`WeightRow` per weight."""
        if not self.shared:
            return [self]
        names = [f"{self.name}[w={w:g}]" for w in self.weights]
        return [WeightRow(self, w, n, latency_of=None if i == 0 else names[0]) for i, (w, n) in
                enumerate(zip(self.weights, names))]

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        """Fit the generative model (loads its checkpoint) and the scorer (trains it); once for all rows."""
        key = (id(dataset), id(train_rows), id(embeddings))
        if key == self._fitted_on:
            return
        self._cache.clear()
        self.generative.fit(dataset, train_rows, embeddings)
        self.scorer.fit(dataset, train_rows, embeddings)
        self._fitted_on = key
        self.train_log = {"scorer": self.scorer.name, "scorer_train_log": getattr(self.scorer, "train_log", {}),
                          "generative_checkpoint": getattr(self.generative, "checkpoint", None),
                          "num_candidates": self.num_candidates, "scorer_candidates": self.scorer_candidates,
                          "fusion": self.fusion, "weights": self.weights}

    def candidates(self, queries: Sequence[Query], k: int, use_cache: bool = False) -> list[Candidates]:
        """Each query's candidates: one beam search (``num_beams = max(num_candidates, k)``) + one scorer pass for
        the queries not yet cached (all of them unless ``use_cache``); stored for the other rows when shared."""
        n = max(self.num_candidates, k)
        out: list[Candidates | None] = [self._cache.get((q, n)) if use_cache else None for q in queries]
        todo = [b for b, c in enumerate(out) if c is None]
        if todo:
            batch = [queries[b] for b in todo]
            items, gen = self.generative.recommend_scored(batch, n, num_beams=n)
            if self.scorer_candidates:
                items, gen = self.join_scorer_candidates(batch, items, gen, max(self.scorer_candidates, k))
            scores = self.scorer.score_items(batch, items)
            for b, q, it, g, s in zip(todo, batch, items, gen, scores):
                out[b] = Candidates(tuple(it), np.asarray(g, dtype=np.float64), np.asarray(s, dtype=np.float64))
                if self.shared:
                    self._cache.setdefault((q, n), out[b])
        return out  # type: ignore[return-value]

    def join_scorer_candidates(self, queries: Sequence[Query], items: list[list[str]], gen: list[np.ndarray],
                               m: int) -> tuple[list[list[str]], list[np.ndarray]]:
        """Beams + the scorer's top ``m`` not among them (after the beams, in the scorer's order), with the
        generative model's exact score of each joined item."""
        extra = [[i for i in dict.fromkeys(top) if i not in seen]
                 for top, seen in zip(self.scorer.recommend(queries, m), map(set, items))]
        extra_gen = self.generative.score_items(queries, extra)
        return ([list(b) + e for b, e in zip(items, extra)],
                [np.concatenate([np.asarray(g, dtype=np.float64), np.asarray(x, dtype=np.float64)])
                 for g, x in zip(gen, extra_gen)])

    def rank(self, candidates: Sequence[Candidates], weight: float, k: int) -> list[list[str]]:
        """Per query the top ``k`` candidates by fused score (module docstring)."""
        return [[c.items[i] for i in fused_order(c.generative, c.scorer, weight)[:k]] for c in candidates]

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        if self.shared:
            raise RuntimeError(f"{self.name} has weights {self.weights}: evaluate its rows() (one per weight)")
        return self.rank(self.candidates(queries, k), self.weights[0], k)


class WeightRow:
    """One weight of a sweep: a recommender row sharing its parent's fit, beam search and scorer pass.

    The first row always decodes (so its latency is real) and fills the cache; the others read it, and
    ``latency_of`` names the row whose latency they report (eval/run.py copies it).
    """

    def __init__(self, parent: GenerativeRerankRecommender, weight: float, name: str, latency_of: str | None):
        self.parent, self.weight, self.name, self.latency_of = parent, weight, name, latency_of

    @property
    def train_log(self) -> dict[str, Any]:
        shares = {"shares_fit_and_decode_with": self.latency_of} if self.latency_of else {}
        return {**self.parent.train_log, "weight": self.weight, **shares}

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        self.parent.fit(dataset, train_rows, embeddings)

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        cands = self.parent.candidates(queries, k, use_cache=self.latency_of is not None)
        return self.parent.rank(cands, self.weight, k)


def check_weights(weights: Sequence[float]) -> None:
    """Fusion weights: at least one, each in [0, 1], no repeats (each names a row)."""
    if not weights:
        raise ValueError("rerank weights: need at least one weight in [0, 1]")
    bad = [w for w in weights if not 0.0 <= w <= 1.0]  # also rejects NaN
    if bad:
        raise ValueError(f"rerank weights {bad} are outside [0, 1] (w = 1: generative only, w = 0: scorer only)")
    if len({f"{w:g}" for w in weights}) != len(weights):
        raise ValueError(f"rerank weights {list(weights)} repeat a value")
