"""The recommender protocol every evaluated method implements, the shared candidate rule, and the simple methods.

A method is any object with ``name``, ``fit(dataset, train_rows, embeddings)`` and ``recommend(queries, k)``.
Queries carry the history but never the target, so no method can peek at it. Lists may contain unknown strings or
repeats: the metrics de-duplicate (first occurrence kept) and count unknown ids as misses (eval/metrics.py).

Candidate rule (identical for every method, applied again by the evaluator to whatever a method returns):
recommend only items of the row's domain (``same_domain``; the published models were trained and ranked per domain)
and, when ``exclude_history`` is set, never an item already in the row's history.

Precomputed predictions (any external model, e.g. the generative model via ``decoding``) are a JSONL
file, one line per evaluated row::

    {"meta": {"dataset_hash": "908709bd...", "split": "test", "name": "genrec"}}     # optional first line
    {"row": 0, "items": ["Office_Products:12", "Office_Products:7", ...]}           # row = index in the split
    {"domain": "Office_Products", "source_row": 17, "items": [...]}                 # or the published row id
    {"row": 1, "items": ["Office_Products:3", ...], "scores": [4.0, 4.0, ...]}     # optional: the ranking scores

Lists are ranked by position; with ``scores`` (one number per item, best first) the target also ranks after every
item with its score, as for the score-based methods here (eval/metrics.py).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from data_builders.cli import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    """One row to recommend for: its index in the evaluated split and everything but the target."""

    row: int
    user_id: str
    domain: str
    history: tuple[str, ...]  # item ids, oldest first
    source_row: int = -1


class Recommender(Protocol):
    """What the evaluator calls. ``recommend`` returns, per query, up to ``k`` item ids, best first."""

    name: str

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None: ...

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]: ...


@dataclass(frozen=True)
class CandidateRule:
    """Which items may be recommended for a row (see module docstring)."""

    same_domain: bool = True
    exclude_history: bool = False

    def keep(self, query: Query, item: str, item_domain: dict[str, str]) -> bool:
        """True if ``item`` may appear in ``query``'s list (unknown ids are kept: they are scored as invalid)."""
        if self.same_domain and item_domain.get(item, query.domain) != query.domain:
            return False
        return not (self.exclude_history and item in query.history)


class Catalogue:
    """Item ids, their rows (= embedding rows), their domains and the tie-break order of the score-based methods."""

    def __init__(self, item_ids: Sequence[str], domains: Sequence[str], tie_seed: int = 0):
        self.item_ids = list(item_ids)
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.domain_of = dict(zip(self.item_ids, domains))
        self.domains = sorted(set(domains))
        self.domain_ids = np.array([self.domains.index(d) for d in domains])  # [N]
        # Which of several tied items fill a list's last places: a fixed random order of the items, not id or row
        # order (row order follows the source's id assignment, often time of first appearance, which correlates
        # with the targets). The target's own rank never profits from it: lists carry their scores (RankedList)
        # and the evaluator counts every tie against the target (eval/metrics.py).
        self.tie_order = np.random.default_rng(tie_seed).permutation(len(self.item_ids))  # position -> item row
        self.tie_position = np.argsort(self.tie_order)  # item row -> position

    @classmethod
    def from_dataset(cls, dataset: Any, tie_seed: int = 0) -> "Catalogue":
        return cls(dataset.items["item_id"], dataset.items["domain"], tie_seed)

    def __len__(self) -> int:
        return len(self.item_ids)

    def candidate_mask(self, queries: Sequence[Query], rule: CandidateRule) -> np.ndarray:
        """bool [B, N]: True where the rule allows item n for query b."""
        mask = np.ones((len(queries), len(self)), dtype=bool)
        for b, q in enumerate(queries):
            if rule.same_domain:
                mask[b] = self.domain_ids == self.domains.index(q.domain)
            if rule.exclude_history:
                mask[b, [self.index[i] for i in q.history if i in self.index]] = False
        return mask


class RankedList(list):
    """A recommendation list (item ids, best first) that also carries the score each entry was ranked by.

    Score-based methods return these, so the evaluator can rank the target after every item with the same score
    (:func:`eval.metrics.tied_rank`); everything else treats it as a plain list. ``next_score`` bounds the score of
    every candidate left out (``-inf``: the list holds all of them; default: the last listed score, i.e. unlisted
    items may tie with it). Slices keep the scores and raise ``next_score`` to the best entry they drop.
    """

    def __init__(self, items: Sequence[str], scores: Sequence[float], next_score: float | None = None):
        super().__init__(items)
        self.scores = np.asarray(scores, dtype=np.float64)
        if self.scores.shape != (len(self),):
            raise ValueError(f"{len(self)} items but scores of shape {self.scores.shape}")
        if next_score is None:
            next_score = float(self.scores[-1]) if len(self) else -np.inf
        self.next_score = float(next_score)

    def __getitem__(self, i):  # type: ignore[override]
        if not isinstance(i, slice):
            return list.__getitem__(self, i)
        dropped = np.ones(len(self), dtype=bool)
        dropped[i] = False
        bound = max([self.next_score, *self.scores[dropped].tolist()])
        return RankedList(list.__getitem__(self, i), self.scores[i], bound)


def ranked_lists(scores: np.ndarray, k: int, catalogue: "Catalogue") -> list[RankedList]:
    """:func:`top_k_from_scores` as item ids with their scores; one more is ranked, so each list knows the best
    score it leaves out (``next_score``). scores: [B, N] (``-inf`` = not allowed)."""
    ids = catalogue.item_ids
    out = []
    for b, top in enumerate(top_k_from_scores(scores, k + 1, catalogue.tie_order)):
        complete = len(top) <= k  # fewer than k + 1 allowed items: nothing is left out
        out.append(RankedList([ids[i] for i in top], scores[b, top], -np.inf if complete else None)[:k])
    return out


def top_k_from_scores(scores: np.ndarray, k: int, tie_order: np.ndarray) -> list[np.ndarray]:
    """Best ``k`` item rows per score row, ties broken by ``tie_order``; ``-inf`` scores are never returned.

    scores: [B, N] float (``-inf`` = not allowed); tie_order: [N] permutation (earlier position wins a tie).
    Returns B int arrays of length ≤ k.

    >>> [a.tolist() for a in top_k_from_scores(np.array([[1., 3., 3., -np.inf]]), 4, np.array([2, 1, 0, 3]))]
    [[2, 1, 0]]
    """
    import torch  # only for its fast top-k *values*; the order itself is decided below

    k = min(k, scores.shape[1])
    kth = torch.topk(torch.from_numpy(scores), k, dim=1).values[:, -1:].numpy()  # [B, 1] k-th best score
    rows, cols = np.nonzero((scores >= kth) & (scores > -np.inf))  # every tie at the cut is a candidate
    tie_position = np.argsort(tie_order)
    # One sort of all candidates by (row, -score, tie position).
    order = np.lexsort((tie_position[cols], -scores[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(len(scores) + 1))
    return [cols[starts[b]:starts[b + 1]][:k] for b in range(len(scores))]


def inner_product_scores(users: np.ndarray, items: np.ndarray, candidates: Sequence[Sequence[str]],
                         index: dict[str, int], name: str) -> list[np.ndarray]:
    """Per query b the scores ``users[b] · items[row(c)]`` (float64) of its candidate item ids c, in their order.

    users: [B, d]; items: [N, d] (rows = ``index`` values). The score-based methods' ``score_items``: the same inner
    product their ``recommend`` ranks by, for given items instead of a top-k. An unknown id is a ``KeyError``.
    """
    if len(candidates) != len(users):
        raise ValueError(f"{name}: {len(candidates)} candidate lists for {len(users)} queries")
    out = []
    for b, items_b in enumerate(candidates):
        unknown = [i for i in items_b if i not in index]
        if unknown:
            raise KeyError(f"{name}: candidate items {unknown[:5]} of query {b} are not in the catalogue")
        rows = np.array([index[i] for i in items_b], dtype=np.int64)
        out.append((items[rows] @ users[b]).astype(np.float64))
    return out


def apply_rule(lists: list[list[str]], queries: Sequence[Query], rule: CandidateRule,
               catalogue: Catalogue) -> list[list[str]]:
    """Drop the entries the candidate rule forbids (cross-domain, history) from each list, keeping order (and the
    scores of a :class:`RankedList`)."""
    out: list[list[str]] = []
    for items, q in zip(lists, queries):
        keep = [rule.keep(q, item, catalogue.domain_of) for item in items]
        kept = [item for item, ok in zip(items, keep) if ok]
        out.append(RankedList(kept, items.scores[np.array(keep, dtype=bool)], items.next_score)
                   if isinstance(items, RankedList) else kept)  # dropped entries are no candidates: same bound
    return out


def candidate_counts(queries: Sequence[Query], catalogue: Catalogue, rule: CandidateRule) -> np.ndarray:
    """[B] how many items the rule lets each query rank among (its domain's items, less its history if excluded)."""
    sizes = np.bincount(catalogue.domain_ids, minlength=len(catalogue.domains))
    out = np.empty(len(queries), dtype=np.int64)
    for b, q in enumerate(queries):
        same = rule.same_domain and q.domain in catalogue.domains
        n = int(sizes[catalogue.domains.index(q.domain)]) if same else len(catalogue)
        if rule.exclude_history:
            n -= sum(1 for i in set(q.history)
                     if i in catalogue.index and (not same or catalogue.domain_of[i] == q.domain))
        out[b] = n
    return out


def item_target_counts(train_rows: Sequence[dict]) -> Counter:
    """How often each item is a training target. Every interaction is the target of exactly one sliding window."""
    return Counter(row["target"] for row in train_rows)


class PopularityRecommender:
    """Most frequent training targets first (among the rule's candidates, so per domain with ``same_domain``).

    With ``same_domain`` global and per-domain popularity are the same ranking; set ``same_domain: false`` in the
    config for a global list over the merged catalogue.
    """

    def __init__(self, rule: CandidateRule, tie_seed: int = 0, name: str = "popularity"):
        self.name, self.rule, self.tie_seed = name, rule, tie_seed

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        self.catalogue = Catalogue.from_dataset(dataset, self.tie_seed)
        counts = item_target_counts(train_rows)
        self.scores = np.array([counts.get(i, 0) for i in self.catalogue.item_ids], dtype=np.float64)  # [N]

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        scores = np.where(self.catalogue.candidate_mask(queries, self.rule), self.scores[None, :], -np.inf)
        return ranked_lists(scores, k, self.catalogue)


class PredictionsRecommender:
    """Serves precomputed predictions from a JSONL file (format in the module docstring).

    ``fit`` reads and validates the file against the evaluated split: every row needs exactly one line, unknown rows
    and a file made for another dataset or split are errors.
    """

    def __init__(self, path: str, split: str, name: str = "", rule: CandidateRule | None = None):
        self.path, self.split = Path(path), split
        self.name = name or self.path.stem
        self.by_row: dict[int, list[str]] = {}  # RankedList where the line had scores

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        rows = dataset.splits[self.split]
        keys = {(d, s): i for i, (d, s) in enumerate(zip(rows["domain"], rows["source_row"]))}
        for line_no, record in read_predictions(self.path):
            if "meta" in record:
                check_predictions_meta(record["meta"], self.path, dataset.dataset_hash, self.split)
                continue
            row = resolve_prediction_row(record, keys, len(rows), f"{self.path}, line {line_no}")
            if not record["items"]:
                raise UserError(f"{self.path}, line {line_no}: empty 'items' list for row {row}; every row needs "
                                "at least one item")
            if row in self.by_row:
                raise UserError(f"{self.path}, line {line_no}: second prediction for row {row}")
            items = [str(i) for i in record["items"]]
            self.by_row[row] = (items if "scores" not in record else
                                RankedList(items, prediction_scores(record, f"{self.path}, line {line_no}")))
        missing = sorted(set(range(len(rows))) - set(self.by_row))
        if missing:
            raise UserError(f"{self.path}: no prediction for {len(missing)} of {len(rows)} {self.split} rows, "
                             f"e.g. rows {missing[:10]}")

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        return [self.by_row[q.row][:k] if q.row in self.by_row else self._unknown(q) for q in queries]

    def _unknown(self, query: Query) -> list[str]:
        raise KeyError(f"{self.path}: no prediction for {self.split} row {query.row} (user {query.user_id!r})")


def prediction_scores(record: dict, where: str) -> list[float]:
    """A predictions line's optional ``scores``: one number per item, not increasing (best first)."""
    scores = record["scores"]
    if not isinstance(scores, list) or len(scores) != len(record["items"]) or \
            not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):
        raise UserError(f"{where}: 'scores' must be a list of {len(record['items'])} numbers, one per item")
    values = np.array(scores, dtype=np.float64)
    if np.isnan(values).any() or (np.diff(values) > 0).any():
        raise UserError(f"{where}: 'scores' must be ordered best first (not increasing, no NaN)")
    return scores


def read_predictions(path: Path):
    """Yield ``(line_no, record)`` for each non-empty JSONL line."""
    if not path.exists():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}, line {line_no}: not UTF-8 text ({e.reason} at byte {e.start} of the "
                                "line)") from None
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}, line {line_no}: not JSON ({e})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}")
                yield line_no, record


def check_predictions_meta(meta: dict, path: Path, dataset_hash: str, split: str) -> None:
    if not isinstance(meta, dict):
        raise UserError(f"{path}: the 'meta' line must hold a JSON object, got {type(meta).__name__}")
    if meta.get("dataset_hash", dataset_hash) != dataset_hash:
        raise UserError(f"{path}: predictions were made for dataset {meta['dataset_hash'][:12]}, "
                         f"but the evaluated dataset is {dataset_hash[:12]}")
    if meta.get("split", split) != split:
        raise UserError(f"{path}: predictions are for split {meta['split']!r}, evaluating {split!r}")


def resolve_prediction_row(record: dict, keys: dict[tuple[str, int], int], n_rows: int, where: str) -> int:
    """The split row a prediction line refers to (``row``, or ``domain`` + ``source_row``)."""
    if not isinstance(record.get("items"), list):
        raise UserError(f"{where}: needs an 'items' list")
    if "row" in record:
        row = record["row"]
        if not isinstance(row, int) or not 0 <= row < n_rows:
            raise UserError(f"{where}: unknown row {row!r} (the split has rows 0..{n_rows - 1})")
        return row
    key = (record.get("domain"), record.get("source_row"))
    if key not in keys:
        raise UserError(f"{where}: unknown row {{'domain': {key[0]!r}, 'source_row': {key[1]!r}}}; "
                         "give 'row' (index in the split) or an existing 'domain' + 'source_row'")
    return keys[key]
