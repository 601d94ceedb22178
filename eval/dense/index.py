"""faiss indexes over item vectors, one per domain when the candidate rule ranks within the row's domain.

* ``exact`` (default): ``IndexFlatIP``, exhaustive inner product — the scores are the model's scores.
* ``ivf``: ``IndexIVFFlat`` (inner product, spherical k-means with an explicit seed and sample size: faiss would
  otherwise subsample to 256 points per list with its own seed); ``nprobe`` lists are scanned per query.
* ``hnsw``: ``IndexHNSWFlat`` (inner product) with explicit M, efConstruction and efSearch (faiss' defaults, 40 and
  16, are tuned for other data).

:class:`ItemIndex` applies the candidate rule: a query only searches its domain's index, history items are dropped
when the rule excludes them (fetching more until k survive), and equal scores are ordered by the catalogue's tie
order — faiss leaves ties unspecified, so hits are fetched until the k-th score is strictly above the last fetched
one. Nothing else is filtered. The lists carry their scores (``RankedList``): the evaluator ranks the target after
every item with the same score.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import faiss
import numpy as np

from data_builders.cli import check_choice, check_range, check_seed
from eval.recommenders import CandidateRule, Catalogue, Query, RankedList

log = logging.getLogger(__name__)
MIN_POINTS_PER_LIST = 39  # faiss warns (and k-means is poor) below 39 training points per centroid


@dataclass
class IndexConfig:
    kind: str = "exact"  # exact | ivf | hnsw
    ivf_nlist: int = 256  # lists (k-means centroids); capped at n / 39 for small catalogues
    ivf_nprobe: int = 16  # lists scanned per query: higher = closer to exact, slower
    ivf_points_per_list: int = 64  # k-means sample = nlist × this
    hnsw_m: int = 32  # graph degree: higher = better recall, more memory (M × 8 bytes per item)
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 64  # candidate list at query time: higher = better recall, slower
    seed: int = 0

    def __post_init__(self) -> None:
        """Bad settings are :class:`~data_builders.cli.UserError`s naming the key (faiss would assert in C++)."""
        check_choice("kind", self.kind, ("exact", "ivf", "hnsw"), where="dense index")
        for key in ("ivf_nlist", "ivf_nprobe", "ivf_points_per_list", "hnsw_m", "hnsw_ef_construction",
                    "hnsw_ef_search"):
            check_range(key, getattr(self, key), 1, where="dense index")
        check_seed("seed", self.seed, where="dense index")


def build_index(vectors: np.ndarray, cfg: IndexConfig) -> faiss.Index:
    """An inner-product index over ``vectors`` [N, d] (float32, any norm).

    >>> index = build_index(np.eye(3, dtype=np.float32), IndexConfig())
    >>> index.search(np.array([[0.1, 0.9, 0.0]], dtype=np.float32), 1)[1].tolist()
    [[1]]
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if cfg.kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif cfg.kind == "ivf":
        nlist = max(1, min(cfg.ivf_nlist, n // MIN_POINTS_PER_LIST))
        if nlist < cfg.ivf_nlist:
            log.info("ivf: %d items allow %d lists, not %d", n, nlist, cfg.ivf_nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed, index.cp.max_points_per_centroid = cfg.seed, cfg.ivf_points_per_list
        index.train(vectors)
        index.nprobe = min(cfg.ivf_nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
    index.add(vectors)
    if cfg.kind == "hnsw":
        index.hnsw.efSearch = cfg.hnsw_ef_search
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` with a clear error for a dimension mismatch. queries [B, d] -> scores, rows [B, k]."""
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ValueError(f"query vectors of shape {queries.shape} for an index of dimension d = {index.d}")
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


class ItemIndex:
    """Item vectors [N, d] (rows = catalogue rows) split into one index per domain (``same_domain``) or one."""

    def __init__(self, vectors: np.ndarray, catalogue: Catalogue, rule: CandidateRule, cfg: IndexConfig):
        if len(vectors) != len(catalogue):
            raise ValueError(f"{len(vectors)} item vectors for a catalogue of {len(catalogue)} items")
        self.catalogue, self.rule, self.dim = catalogue, rule, vectors.shape[1]
        groups = catalogue.domain_ids if rule.same_domain else np.zeros(len(catalogue), dtype=int)
        self.rows = [np.flatnonzero(groups == g) for g in range(groups.max() + 1)]  # group -> catalogue rows
        self.indexes = [build_index(vectors[rows], cfg) for rows in self.rows]

    def group_of(self, query: Query) -> int:
        if not self.rule.same_domain:
            return 0
        if query.domain not in self.catalogue.domains:
            raise ValueError(f"row {query.row}: domain {query.domain!r} has no items in the catalogue")
        return self.catalogue.domains.index(query.domain)

    def search(self, queries: Sequence[Query], vectors: np.ndarray, k: int) -> list[list[str]]:
        """The top ``k`` item ids per query among the rule's candidates. vectors [B, d] float32."""
        if vectors.shape != (len(queries), self.dim):
            raise ValueError(f"query vectors of shape {vectors.shape} for {len(queries)} queries and d = {self.dim}")
        out: list[list[str]] = [[] for _ in queries]
        groups = np.array([self.group_of(q) for q in queries])
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            for b, items in zip(members, self._search_group(g, [queries[i] for i in members], vectors[members], k)):
                out[b] = items
        return out

    def _search_group(self, g: int, queries: list[Query], vectors: np.ndarray, k: int) -> list[list[str]]:
        rows, index, n = self.rows[g], self.indexes[g], len(self.rows[g])
        out: list[list[str] | None] = [None] * len(queries)
        todo, fetch = list(range(len(queries))), min(n, k + 10)
        while todo:  # fetch, order ties, drop history items; fetch more for rows left short or cut inside a tie
            scores, local = search(index, vectors[todo], fetch)  # [T, fetch] each, best first
            again = []
            for t, b in enumerate(todo):
                items, complete = self._rank(scores[t], rows[local[t][local[t] >= 0]], queries[b], k)
                if complete or fetch == n:
                    if fetch == n:
                        items.next_score = -np.inf  # the whole group was fetched: nothing unlisted can tie
                    out[b] = items[:k]
                else:
                    again.append(b)
            todo, fetch = again, min(n, 4 * fetch)
        return out  # type: ignore[return-value]

    def _rank(self, scores: np.ndarray, rows: np.ndarray, query: Query, k: int) -> tuple[RankedList, bool]:
        """Hits ordered by (score, tie order) with the rule applied; complete = the top k cannot change."""
        scores = scores[: len(rows)]
        order = np.lexsort((self.catalogue.tie_position[rows], -scores))
        rows, scores = rows[order], scores[order]
        ids = self.catalogue.item_ids
        keep = [j for j, r in enumerate(rows) if not (self.rule.exclude_history and ids[r] in query.history)]
        complete = len(keep) >= k and scores[keep[k - 1]] > scores[-1]
        return RankedList([ids[rows[j]] for j in keep], scores[keep]), complete
