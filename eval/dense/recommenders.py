"""The dense-retrieval methods as evaluation recommenders (the protocol of eval/recommenders.py).

* ``random``: a seeded uniform random order per row (the lower bound).
* ``bm25``: BM25 over the serialised item text, query = the concatenated history texts.
* ``bi_encoder`` / ``bi_encoder_title``: frozen text embeddings, q = mean (or last) history item vector.
* ``xpert``: full-rank d×d morph of the history mean, h_u from mean pooling.
* ``mini_xpert``: low-rank morph (r = 32) of the newest item, h_u from an LSTM over the last 10 items.

Every method ranks the same candidates (the :class:`~eval.recommenders.CandidateRule`: the row's domain, history
items only if ``exclude_history``) and every history item must be a catalogue item (else ``ValueError``).
Empty history: the query falls back to a one-item pseudo-history, the **domain's default vector** = the
popularity-weighted mean of its item vectors (weights: training-target count + 1), unit norm; BM25 falls back to
popularity (training-target counts), Random needs no history.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import sparse

from data_builders.cli import UserError, check_choice, check_range
from data_builders.embeddings import DEFAULT_ENCODER
from eval.dense.bm25 import BM25
from eval.dense.index import IndexConfig, ItemIndex
from eval.dense.item_text import item_texts, item_vectors
from eval.dense.towers import MorphTower, TowerConfig, seed_query
from eval.dense.training import PAD, DenseTrainConfig, Examples, train_tower
from eval.memory import PeakRSS
from eval.recommenders import (CandidateRule, Catalogue, Query, inner_product_scores, item_target_counts,
                               ranked_lists)

log = logging.getLogger(__name__)


def history_item_rows(queries: Sequence[Query], index: dict[str, int], name: str) -> list[list[int]]:
    """Catalogue rows of each query's history; an unknown item is an error naming the row and the item."""
    out = []
    for q in queries:
        unknown = [i for i in q.history if i not in index]
        if unknown:
            raise ValueError(f"{name}: row {q.row} (user {q.user_id!r}, domain {q.domain!r}): history items "
                             f"{unknown[:5]} are not in the catalogue")
        out.append([index[i] for i in q.history])
    return out


def candidate_groups(catalogue: Catalogue, rule: CandidateRule) -> np.ndarray:
    """[N] group of each item: its domain index with ``same_domain``, else 0 for all."""
    return catalogue.domain_ids if rule.same_domain else np.zeros(len(catalogue), dtype=int)


def default_vectors(vectors: np.ndarray, groups: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[G, d]: per group the (count + 1)-weighted mean item vector, unit norm (the empty-history query)."""
    out = np.zeros((groups.max() + 1, vectors.shape[1]), dtype=np.float32)
    for g in range(len(out)):
        sel = groups == g
        mean = ((counts[sel] + 1.0)[:, None] * vectors[sel]).sum(0)
        out[g] = mean / max(np.linalg.norm(mean), 1e-12)
    return out


class RandomRecommender:
    """A uniform random order of the row's candidates, seeded by (seed, row): the same list in any batch."""

    def __init__(self, rule: CandidateRule, seed: int = 0, name: str = "random"):
        self.rule, self.seed, self.name = rule, seed, name
        self.train_log: dict[str, Any] = {"params_per_user": 0}

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        self.catalogue = Catalogue.from_dataset(dataset, self.seed)

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        history_item_rows(queries, self.catalogue.index, self.name)
        scores = np.stack([np.random.default_rng([self.seed, q.row]).random(len(self.catalogue)) for q in queries])
        scores[~self.catalogue.candidate_mask(queries, self.rule)] = -np.inf
        return ranked_lists(scores, k, self.catalogue)


class BM25Recommender:
    """BM25 (eval/dense/bm25.py) with the concatenated history texts as the query (seed 000 baseline)."""

    def __init__(self, rule: CandidateRule, k1: float = 1.2, b: float = 0.75, tie_seed: int = 0, name: str = "bm25"):
        self.rule, self.k1, self.b, self.tie_seed, self.name = rule, k1, b, tie_seed, name
        self.train_log: dict[str, Any] = {}

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        self.catalogue = Catalogue.from_dataset(dataset, self.tie_seed)
        with PeakRSS() as mem:
            self.bm25 = BM25(item_texts(dataset.items, "meta"), self.k1, self.b)
        counts = item_target_counts(train_rows)
        self.popularity = np.array([counts.get(i, 0) for i in self.catalogue.item_ids], dtype=np.float64)  # [N]
        self.train_log = {"params_per_user": 0, "peak_rss_mb": mem.peak_mb, "vocabulary": len(self.bm25.vocab),
                          "config": {"k1": self.k1, "b": self.b}}

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        rows = history_item_rows(queries, self.catalogue.index, self.name)
        cols = [r for hist in rows for r in hist]
        owner = np.repeat(np.arange(len(rows)), [len(h) for h in rows])
        counts = sparse.csr_matrix((np.ones(len(cols)), (owner, cols)), shape=(len(rows), len(self.catalogue)))
        scores = self.bm25.scores(counts)  # [B, N]
        no_terms = ~(scores > 0).any(axis=1)
        scores[no_terms] = self.popularity  # empty history (or no history text): popularity
        scores[~self.catalogue.candidate_mask(queries, self.rule)] = -np.inf
        return ranked_lists(scores, k, self.catalogue)


@dataclass
class DenseConfig:
    text: str = "meta"  # item text behind the vectors: meta (Algorithm 1 artifact) | title
    history_len: int = 10  # L: the newest L history items
    query: str = "mean"  # bi-encoder query (no tower): mean | last history item vector
    dim: int = 0  # the model's d; 0 = the item vectors' d (set it to assert the embeddings' dimension)
    tower: TowerConfig | None = None  # None = bi-encoder (no training)
    train: DenseTrainConfig = field(default_factory=DenseTrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    encoder: str = DEFAULT_ENCODER  # encodes title texts, and is fine-tuned when finetune_encoder_layers > 0
    finetune_encoder_layers: int = 0  # 0 = frozen item vectors; 2 = the seed's last 2 of 6 layers
    item_max_tokens: int = 64  # fine-tuning only: item text budget (the seed's item length 64)

    def __post_init__(self) -> None:
        """Bad settings are :class:`~data_builders.cli.UserError`s naming the key, raised before any fitting."""
        where = "dense config"
        check_choice("text", self.text, ("meta", "title"), where=where)
        check_choice("query", self.query, ("last", "mean"), where=where)
        check_range("history_len", self.history_len, 1, where=where)
        check_range("dim", self.dim, 0, where=where)
        check_range("finetune_encoder_layers", self.finetune_encoder_layers, 0, where=where)
        check_range("item_max_tokens", self.item_max_tokens, 3, where=where)  # [CLS] text [SEP]
        if self.tower is not None and self.dim and self.tower.morph == "low_rank" and self.tower.rank > self.dim:
            raise UserError(f"{where}: `rank` r={self.tower.rank} must be at most the model's d={self.dim}")


class DenseRecommender:
    """Query vector from the history (bi-encoder or a trained morph tower) -> faiss search within the rule."""

    def __init__(self, config: DenseConfig, rule: CandidateRule, name: str, tie_seed: int = 0):
        self.cfg, self.rule, self.name, self.tie_seed = config, rule, name, tie_seed
        self.tower: MorphTower | None = None
        self.train_log: dict[str, Any] = {}
        self.epoch_hook: Callable[[int], None] | None = None  # called after each epoch (e.g. validation curves)

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        cfg, self.train_log, self.tower = self.cfg, {}, None
        self.catalogue = Catalogue.from_dataset(dataset, self.tie_seed)
        self.groups = candidate_groups(self.catalogue, self.rule)  # [N]
        counts = item_target_counts(train_rows)
        self.counts = np.array([counts.get(i, 0) for i in self.catalogue.item_ids], dtype=np.float64)  # [N]
        with PeakRSS() as mem:
            if not cfg.finetune_encoder_layers:  # frozen item vectors: searchable already during training
                self.set_item_vectors(item_vectors(dataset, embeddings, cfg.text, cfg.encoder))
            if cfg.tower is not None:
                vectors = self._train(dataset, train_rows)
                if cfg.finetune_encoder_layers:
                    self.set_item_vectors(vectors)
        vectors = self.item_vectors
        per_user = self.tower.params_per_user if self.tower is not None else 0
        self.train_log = {**self.train_log, "params_per_user": per_user, "peak_rss_mb": mem.peak_mb,
                          "rss_before_mb": round(mem.start_mb or 0.0, 1), "peak_rss_scope": mem.scope,
                          "dim": int(vectors.shape[1]), "config": asdict(cfg)}

    def set_item_vectors(self, vectors: np.ndarray) -> None:
        """Item vectors [N, d] -> the per-domain faiss indexes and the default (empty-history) vectors."""
        self.check_dim(vectors.shape[1])
        self.item_vectors = torch.from_numpy(np.asarray(vectors, dtype=np.float32))
        self.defaults = torch.from_numpy(default_vectors(vectors, self.groups, self.counts))  # [G, d]
        self.table = torch.cat([self.item_vectors, self.defaults])  # rows N + g = group g's default
        self.index = ItemIndex(vectors, self.catalogue, self.rule, self.cfg.index)

    def check_dim(self, d: int) -> None:
        if self.cfg.dim and d != self.cfg.dim:
            raise UserError(f"{self.name}: the model's d = {self.cfg.dim} (dense_dim) but the item embeddings have "
                             f"d = {d} ({self.cfg.text} text); rebuild the embeddings or set dense_dim: {d}")

    def history_batch(self, histories: Sequence[Sequence[int]], groups: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """rows [B, L] (right-padded with PAD; an empty history = [N + group]) and lengths [B]."""
        n, width = len(self.catalogue), self.cfg.history_len
        hists = [list(h[-width:]) or [n + g] for h, g in zip(histories, groups)]
        rows = torch.full((len(hists), max(len(h) for h in hists)), PAD, dtype=torch.long)
        for b, h in enumerate(hists):
            rows[b, : len(h)] = torch.tensor(h)
        return rows, torch.tensor([len(h) for h in hists])

    @torch.inference_mode()
    def query_vectors(self, queries: Sequence[Query]) -> np.ndarray:
        """[B, d] float32 unit query vectors."""
        histories = history_item_rows(queries, self.catalogue.index, self.name)
        groups = [self.index.group_of(q) for q in queries]
        rows, lengths = self.history_batch(histories, groups)
        hist = self.table[rows.clamp(min=0)] * (rows != PAD)[..., None]  # [B, L, d]
        q = seed_query(hist, lengths, self.cfg.query) if self.tower is None else self.tower(hist, lengths)
        return q.numpy()

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        return self.index.search(queries, self.query_vectors(queries), k)

    def score_items(self, queries: Sequence[Query], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per query the score the index ranks by (q · v_i) of each of its candidate item ids."""
        return inner_product_scores(self.query_vectors(queries), self.item_vectors.numpy(), candidates,
                                    self.catalogue.index, self.name)

    def _train(self, dataset: Any, train_rows: list[dict]) -> np.ndarray:
        """Train the tower (and the encoder's last layers when fine-tuning); return the final item vectors."""
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        encoder = self._finetune_encoder(dataset) if cfg.finetune_encoder_layers else None
        # the starting item vectors (fine-tuning: only for the empty-history defaults, which stay fixed)
        vectors = encoder.encode_all() if encoder is not None else self.item_vectors.numpy()
        self.check_dim(vectors.shape[1])
        self.tower = MorphTower(TowerConfig(**{**asdict(cfg.tower), "dim": vectors.shape[1]}))
        defaults = torch.from_numpy(default_vectors(vectors, self.groups, self.counts))
        table = torch.cat([torch.from_numpy(vectors), defaults])
        n = len(self.catalogue)

        def lookup(rows: torch.Tensor) -> torch.Tensor:  # [M] -> [M, d]
            if encoder is None:
                return table[rows]
            out = table[rows].clone()  # default rows stay fixed
            real = rows < n
            out[real] = encoder(rows[real])
            return out

        examples = self.examples(train_rows)
        group_items = [torch.from_numpy(np.flatnonzero(self.groups == g)) for g in range(self.groups.max() + 1)]
        extra = encoder.trainable_parameters() if encoder is not None else []
        if encoder is not None and cfg.train.negatives != "in_batch":
            raise ValueError(f"{self.name}: encoder fine-tuning needs negatives=in_batch (domain would encode "
                             "every item of the domain at every step)")
        if encoder is not None:
            encoder.train()
        self.train_log = train_tower(self.tower, lookup, extra, examples, group_items, cfg.train, self.name,
                                     self.epoch_hook)
        log.info("%s: %d rows, final loss %.3f, %.1f s", self.name, len(train_rows),
                 self.train_log["epoch_losses"][-1] if self.train_log["epoch_losses"] else float("nan"),
                 self.train_log["seconds"])
        return encoder.encode_all() if encoder is not None else vectors

    def examples(self, train_rows: list[dict]) -> Examples:
        histories = history_item_rows([Query(i, r["user_id"], r["domain"], tuple(r["history"]))
                                       for i, r in enumerate(train_rows)], self.catalogue.index, self.name)
        targets = torch.tensor([self.catalogue.index[r["target"]] for r in train_rows])  # [R]
        groups = torch.from_numpy(self.groups[targets.numpy()])  # [R] a row's group = its target's
        rows, lengths = self.history_batch(histories, groups.tolist())
        return Examples(rows, lengths, targets, groups)

    def _finetune_encoder(self, dataset: Any):
        from data_builders.embeddings import resolve_encoder_path, serialize_items
        from eval.dense.finetune import TrainableTextEncoder

        path = resolve_encoder_path(self.cfg.encoder)
        if self.cfg.text == "meta":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            texts = serialize_items(dataset.items, tokenizer, self.cfg.item_max_tokens - 2)  # room for [CLS] [SEP]
        else:
            texts = item_texts(dataset.items, "title")
        return TrainableTextEncoder(str(path), texts, self.cfg.finetune_encoder_layers, self.cfg.item_max_tokens)
