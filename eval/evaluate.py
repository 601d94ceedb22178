"""Run one recommender over the evaluated rows and turn its lists into the numbers of ``metrics.json``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from data_builders.cli import UserError
from eval import metrics as M
from eval.recommenders import CandidateRule, Catalogue, Query, RankedList, Recommender, apply_rule, candidate_counts

log = logging.getLogger(__name__)


@dataclass
class EvalRows:
    """The evaluated split: queries (no targets) and, separately, the targets the metrics compare against."""

    queries: list[Query]
    targets: list[str]

    @classmethod
    def from_split(cls, table: Any, max_rows: int = 0, seed: int = 0) -> "EvalRows":
        """Every row, or with ``max_rows`` > 0 a seeded sample of that many (``Query.row`` keeps the split index)."""
        import random

        idx = list(range(len(table)))
        if 0 < max_rows < len(idx):
            idx = sorted(random.Random(seed).sample(idx, max_rows))
        rows = table.select(idx) if len(idx) < len(table) else table
        queries = [Query(i, r["user_id"], r["domain"], tuple(r["history"]), r["source_row"])
                   for i, r in zip(idx, rows)]
        return cls(queries, list(rows["target"]))

    @property
    def domains(self) -> np.ndarray:
        return np.array([q.domain for q in self.queries])

    @property
    def users(self) -> list[str]:
        """User key per row; ids are only unique inside a domain, so the key is ``<domain>/<user_id>``."""
        return [f"{q.domain}/{q.user_id}" for q in self.queries]


def collect_lists(rec: Recommender, rows: EvalRows, k: int, batch_size: int) -> tuple[list[list[str]], float]:
    """``rec``'s lists for every row (raw, as returned; a :class:`RankedList` keeps its scores) and the seconds it
    took. Empty lists are an error."""
    lists: list[list[str]] = []
    start = time.perf_counter()
    for s in tqdm(range(0, len(rows.queries), batch_size), desc=f"{rec.name}: recommend", unit="batch"):
        batch = rows.queries[s : s + batch_size]
        out = rec.recommend(batch, k)
        if len(out) != len(batch):
            raise ValueError(f"{rec.name}: returned {len(out)} lists for {len(batch)} rows")
        lists.extend(items if isinstance(items, RankedList) else list(items) for items in out)
    for i, items in enumerate(lists):
        if not items:
            q = rows.queries[i]
            raise ValueError(f"{rec.name}: empty recommendation list for row {i} (user {q.user_id!r}, domain "
                             f"{q.domain!r}); every row needs at least one item")
    return lists, time.perf_counter() - start


def measure_latency(rec: Recommender, rows: EvalRows, k: int, n: int, seed: int) -> dict[str, float]:
    """Per-user latency: ``n`` random rows recommended one at a time (batch of 1), in milliseconds."""
    if n <= 0:
        return {}
    pick = np.random.default_rng(seed).choice(len(rows.queries), size=min(n, len(rows.queries)), replace=False)
    times = []
    for i in pick:
        start = time.perf_counter()
        rec.recommend([rows.queries[i]], k)
        times.append(1000 * (time.perf_counter() - start))
    t = np.array(times)
    return {"mean_ms": float(t.mean()), "p50_ms": float(np.percentile(t, 50)),
            "p95_ms": float(np.percentile(t, 95)), "n": len(t)}


def score_lists(lists: list[list[str]], rows: EvalRows, catalogue: Catalogue, rule: CandidateRule,
                ks: Sequence[int], slices: dict[str, np.ndarray], known: set[str] | None = None) -> dict[str, Any]:
    """Metrics of raw lists: invalid/duplicate rates on the raw lists, ranking metrics after the candidate rule
    (scored lists: every tie counted against the target, eval/metrics.py). With ``known`` (the training rows'
    items) also ``new_items@K``: the share of top-K slots holding an item no training row has.

    Returns ``{"by_domain": {domain | "all": {...}}, "per_user": {...}, "slices": {...}}``.
    """
    valid = set(catalogue.item_ids)
    kmax, kref = max(ks), reference_k(ks)
    raw_top = [M.dedup_first(items)[:kmax] for items in lists]
    filtered = apply_rule(lists, rows.queries, rule, catalogue)
    ranks = M.target_ranks(filtered, rows.targets, candidate_counts(rows.queries, catalogue, rule))  # [R]
    users, domains = rows.users, rows.domains
    by_domain, per_user = {}, {}
    for dom in ["all", *sorted(set(domains))]:
        sel = np.ones(len(ranks), bool) if dom == "all" else domains == dom
        idx = np.flatnonzero(sel)
        dom_items = valid if dom == "all" else {i for i in valid if catalogue.domain_of[i] == dom}
        by_domain[dom] = {
            **M.ranking_metrics(ranks[sel], ks),
            "invalid_rate": M.invalid_rate([raw_top[i] for i in idx], valid, kmax),
            "duplicate_rate": M.duplicate_rate([lists[i] for i in idx]),
            f"coverage@{kref}": M.coverage([filtered[i] for i in idx], dom_items, kref),
            "rows": int(sel.sum()),
            **({f"new_items@{kref}": new_item_share([filtered[i] for i in idx], known, kref)}
               if known is not None else {}),
        }
        sel_users = [users[i] for i in idx]
        per_user[dom] = {**M.ranking_metrics(ranks[sel], ks, users=sel_users), "users": len(set(sel_users))}
    slice_out = {name: {f"hr@{kref}": float(M.hit_rate(ranks[m], kref).mean()) if m.any() else None,  # None: empty
                        f"ndcg@{kref}": float(M.ndcg(ranks[m], kref).mean()) if m.any() else None,
                        "rows": int(m.sum())}
                 for name, m in slices.items()}
    return {"by_domain": by_domain, "per_user": per_user, "slices": slice_out}


def new_item_share(lists: Sequence[Sequence[str]], known: set[str], k: int) -> float:
    """Share of the top-``k`` slots of ``lists`` that hold an item outside ``known``.

    >>> new_item_share([["a", "x"], ["b", "c"]], {"a", "b", "c"}, 2)
    0.25
    """
    slots = [i for items in lists for i in list(items)[:k]]
    return sum(i not in known for i in slots) / len(slots) if slots else 0.0


def reference_k(ks: Sequence[int]) -> int:
    """The K of the single-K views (coverage, slices, per-user table, logs): 10 when evaluated, else the largest
    K below 10, else the smallest K."""
    ks = sorted(set(ks))
    return 10 if 10 in ks else max((k for k in ks if k < 10), default=ks[0])


def request_size(ks: Sequence[int], rule: CandidateRule, max_history: int) -> int:
    """How many items to ask each method for: max K, plus room for history items the rule will drop."""
    return max(ks) + (max_history if rule.exclude_history else 0)


def check_ks(ks: Sequence[int], catalogue: Catalogue, rule: CandidateRule) -> None:
    """K must be positive and no larger than the smallest candidate catalogue (a domain's items)."""
    if not ks or min(ks) < 1:
        raise UserError(f"ks={list(ks)}: every K must be >= 1")
    sizes = ({d: int((catalogue.domain_ids == i).sum()) for i, d in enumerate(catalogue.domains)}
             if rule.same_domain else {"all": len(catalogue)})
    domain, smallest = min(sizes.items(), key=lambda kv: kv[1])
    if max(ks) > smallest:
        raise UserError(f"ks: K={max(ks)} is larger than the catalogue ranked for {domain!r} ({smallest} items)")
