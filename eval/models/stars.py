"""A STARS-style sequential recommender (seed 002), sized for this CPU.

* Item token: e_i = W t_i + Δ_i + T m_i — a frozen text embedding t_i (data_builders.embeddings) through a learned
  projection W, a learnable per-item delta Δ_i (starts at 0, so a new item is its text), and optional tags m_i
  (brand and categories, multi-hot, averaged tag embeddings T).
* Dual memory: a [USER] token is prepended; it attends to the whole history (long-term vector h_user) while item
  positions attend causally to items only; the last position is the session vector h_last.
  The user vector is h = W_c [h_user; h_last].
* Logit: s_i = h · e_i − α log p̃_i with p̃ the add-one smoothed training popularity and α learned (α < 0 boosts
  popular items, α > 0 debiases). Both terms fit in one inner product: [h, −α] · [e_i, log p̃_i].
* Serving: exact maximum-inner-product search with faiss (IndexFlatIP) over those augmented vectors, then a filter
  step (the candidate rule: the row's domain, optionally no history items), fetching more until k items survive.

Not here: calendar/event context offsets (the data has no timestamps) and LLM-extracted tags (brand and categories
from the catalogue stand in for them). Trained on each row's last position (history -> target).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import faiss
import numpy as np
import torch
from torch import nn

from eval.recommenders import (CandidateRule, Catalogue, Query, RankedList, apply_rule, inner_product_scores,
                               item_target_counts)
from eval.models.sasrec import Block, SASRecConfig
from eval.models.training import (PAD, DomainSoftmax, TrainSettings, encode_histories, seed_everything, train_loop,
                           trim_padding)

log = logging.getLogger(__name__)


@dataclass
class STARSConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 10  # newest history items seen; eval.run sets it from `history_len` (default: the dataset's)
    dropout: float = 0.2
    tags: bool = True  # brand + categories as multi-hot tags
    tag_min_count: int = 3  # rarer tags are dropped (they would be per-item ids in disguise)
    user_token: bool = True  # the [USER] long-term vector beside the session vector
    pop_prior: bool = True  # the −α log p̃ term
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    seed: int = 0
    time_budget_minutes: float = 0.0  # > 0: stop after the epoch that passes it (eval/models/training.py)


def item_tags(brands: Sequence[str], categories: Sequence[Sequence[str]],
              min_count: int) -> tuple[list[list[int]], list[str]]:
    """Per item the ids of its frequent tags (``brand:<x>``, ``cat:<y>``, lower-cased), and the tag vocabulary."""
    raw = [[f"brand:{b.strip().lower()}"] * bool(b.strip()) + [f"cat:{c.strip().lower()}" for c in cats if c.strip()]
           for b, cats in zip(brands, categories)]
    counts = Counter(t for tags in raw for t in set(tags))
    vocab = sorted(t for t, c in counts.items() if c >= min_count)
    index = {t: i for i, t in enumerate(vocab)}
    return [sorted({index[t] for t in tags if t in index}) for tags in raw], vocab


class STARS(nn.Module):
    """tokens [B, L] (0 = pad) -> user vectors [B, dim]; scores = user @ item_matrix().T + item_bias()."""

    def __init__(self, cfg: STARSConfig, text: np.ndarray, tags: list[list[int]], n_tags: int, log_pop: np.ndarray):
        super().__init__()
        self.cfg = cfg
        block_cfg = SASRecConfig(dim=cfg.dim, heads=cfg.heads, dropout=cfg.dropout, max_len=cfg.max_len + 1)
        self.register_buffer("text", torch.from_numpy(text).float())  # [N, d_text], frozen
        self.register_buffer("log_pop", torch.from_numpy(log_pop).float())  # [N]
        self.text_proj = nn.Linear(text.shape[1], cfg.dim, bias=False)
        self.delta = nn.Embedding(len(text), cfg.dim)
        nn.init.zeros_(self.delta.weight)
        self.tag_emb = nn.EmbeddingBag(max(n_tags, 1), cfg.dim, mode="mean")
        nn.init.normal_(self.tag_emb.weight, std=0.02)
        self.register_buffer("tag_ids", torch.tensor([t for ts in tags for t in ts], dtype=torch.long))
        offsets = np.cumsum([0] + [len(t) for t in tags[:-1]])  # EmbeddingBag: where each item's tag list starts
        self.register_buffer("tag_offsets", torch.tensor(offsets, dtype=torch.long))
        self.user = nn.Parameter(torch.randn(cfg.dim) * cfg.dim ** -0.5)  # the [USER] token
        self.pos = nn.Embedding(cfg.max_len + 1, cfg.dim)
        nn.init.normal_(self.pos.weight, std=cfg.dim ** -0.5)  # the scale of the item vectors, not N(0, 1)
        self.blocks = nn.ModuleList(Block(block_cfg) for _ in range(cfg.layers))
        self.final_norm, self.drop = nn.LayerNorm(cfg.dim), nn.Dropout(cfg.dropout)
        self.combine = nn.Linear(2 * cfg.dim if cfg.user_token else cfg.dim, cfg.dim)
        self.alpha = nn.Parameter(torch.zeros(()), requires_grad=cfg.pop_prior)

    def item_matrix(self) -> torch.Tensor:
        """[N + 1, dim]: row 0 = padding (zeros), row n + 1 = e_n = W t_n + Δ_n (+ T m_n)."""
        e = self.text_proj(self.text) + self.delta.weight  # [N, D]
        if self.cfg.tags:
            e = e + self.tag_emb(self.tag_ids, self.tag_offsets)  # items without tags add zeros
        return torch.cat([e.new_zeros(1, e.shape[1]), e])

    def item_bias(self) -> torch.Tensor:
        """[N + 1] additive logit −α log p̃_i (0 for padding and when the prior is off)."""
        bias = -self.alpha * self.log_pop if self.cfg.pop_prior else torch.zeros_like(self.log_pop)
        return torch.cat([bias.new_zeros(1), bias])

    def forward(self, tokens: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        items = self.item_matrix() if items is None else items
        b, length = tokens.shape
        # [B, L, D]; position row 0 belongs to [USER], the newest item always gets the last row
        x = items[tokens] + self.pos.weight[-length:][None]
        x = torch.cat([self.user.expand(b, 1, -1) + self.pos.weight[:1][None], x], dim=1)  # [B, 1 + L, D]
        x = self.drop(x)
        mask = user_token_mask(tokens)
        for block in self.blocks:
            x = block(x, mask, None)
        h = self.final_norm(x)  # [B, 1 + L, D]
        both = torch.cat([h[:, 0], h[:, -1]], dim=-1) if self.cfg.user_token else h[:, -1]
        return self.combine(both)  # [B, D]


def user_token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, 1 + L, 1 + L]: [USER] (index 0) sees itself and every real item; items see earlier real items."""
    b, length = tokens.shape
    real = torch.cat([torch.ones(b, 1, dtype=torch.bool), tokens != PAD], dim=1)  # [B, 1 + L]
    causal = torch.ones(length + 1, length + 1, dtype=torch.bool).tril()
    causal[1:, 0] = False  # items never attend to [USER], so their states stay purely sequential
    causal[0, :] = True  # [USER] reads the whole history
    return (causal[None] & real[:, None, :])[:, None] | torch.eye(length + 1, dtype=torch.bool)


class STARSRecommender:
    """The :class:`~eval.recommenders.Recommender` wrapper: trains STARS, serves with faiss MIPS + filter."""

    def __init__(self, config: STARSConfig, rule: CandidateRule, name: str = "stars", tie_seed: int = 0):
        self.cfg, self.rule, self.name, self.tie_seed = config, rule, name, tie_seed
        self.train_log: dict[str, Any] = {}
        self.epoch_hook: Callable[[int], None] | None = None  # called before each epoch (e.g. validation curves)

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        if embeddings is None:
            raise ValueError(f"{self.name}: needs the item text embeddings (config `embeddings`)")
        cfg, gen = self.cfg, seed_everything(self.cfg.seed)
        self.catalogue = Catalogue.from_dataset(dataset, self.tie_seed)
        counts = item_target_counts(train_rows)
        pop = np.array([counts.get(i, 0) + 1.0 for i in self.catalogue.item_ids])  # add-one smoothing
        tags, vocab = item_tags(dataset.items["brand"], dataset.items["categories"], cfg.tag_min_count)
        self.model = STARS(cfg, embeddings, tags, len(vocab), np.log(pop / pop.sum()))
        tokens = encode_histories([r["history"] for r in train_rows], self.catalogue.index, cfg.max_len)  # [R, L]
        labels = torch.tensor([self.catalogue.index[r["target"]] + 1 for r in train_rows])[:, None]  # [R, 1]
        row_domain = torch.tensor([self.catalogue.domains.index(r["domain"]) for r in train_rows])
        softmax = DomainSoftmax(self.catalogue, self.rule.same_domain)

        def batch_loss(idx: torch.Tensor, epoch: int) -> torch.Tensor:
            items = self.model.item_matrix()  # [N + 1, D], once per batch
            (batch,) = trim_padding(tokens[idx])  # [B, L']
            user = self.model(batch, items)[:, None]  # [B, 1, D]
            return softmax.full_loss(user, items, labels[idx], row_domain[idx], self.model.item_bias())

        settings = TrainSettings(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.seed,
                                 cfg.time_budget_minutes)
        self.train_log = train_loop(self.model, (tokens != PAD).sum(1), batch_loss, settings, gen, self.name,
                                    self.epoch_hook)
        self.train_log.update(examples=len(tokens), tags=len(vocab), alpha=round(self.model.alpha.item(), 4),
                              config=asdict(cfg))
        self.index = self.build_index()
        log.info("%s: %d rows, %d tags, alpha %.3f, %.1f s", self.name, len(tokens), len(vocab),
                 self.model.alpha.item(), self.train_log["seconds"])

    @torch.inference_mode()
    def build_index(self) -> faiss.IndexFlatIP:
        """Exact MIPS index over [e_i, log p̃_i] (the prior rides along as one extra dimension).

        Also caches the item vectors, so serving embeds nothing but the history (STARS' offline item embeddings).
        """
        self.item_vectors = self.model.item_matrix()  # [N + 1, D]
        items = self.item_vectors[1:]  # [N, D]
        prior = self.model.log_pop[:, None] if self.cfg.pop_prior else torch.zeros(len(items), 1)
        vectors = torch.cat([items, prior], dim=1).numpy().astype(np.float32)  # [N, D + 1]
        self.search_vectors = vectors  # what the index holds (score_items reads them)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return index

    @torch.inference_mode()
    def user_vectors(self, queries: Sequence[Query]) -> np.ndarray:
        """[B, D + 1] queries [h, −α] for the augmented index."""
        tokens = encode_histories([q.history for q in queries], self.catalogue.index, self.cfg.max_len)
        h = self.model(tokens, self.item_vectors)  # [B, D]
        alpha = self.model.alpha.item() if self.cfg.pop_prior else 0.0
        return torch.cat([h, torch.full((len(h), 1), -alpha)], dim=1).numpy().astype(np.float32)

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        users, ids = self.user_vectors(queries), self.catalogue.item_ids
        out: list[list[str] | None] = [None] * len(queries)
        todo, fetch = list(range(len(queries))), min(len(ids), 4 * k + 2 * self.cfg.max_len)
        while todo:  # filter step: fetch, drop what the rule forbids, fetch more for rows left short
            scores, rows = self.index.search(users[todo], fetch)  # [T, fetch] each
            short = []
            for t, b in enumerate(todo):
                ranked, ranked_scores = self.tie_sorted(scores[t], rows[t], with_scores=True)
                # the scores travel with the list: the evaluator ranks ties against the target
                hits = RankedList([ids[i] for i in ranked], ranked_scores, -np.inf if fetch == len(ids) else None)
                kept = apply_rule([hits], [queries[b]], self.rule, self.catalogue)[0]
                if len(kept) >= k or fetch == len(ids):
                    out[b] = kept[:k]
                else:
                    short.append(b)
            todo, fetch = short, min(len(ids), 4 * fetch)
        return out  # type: ignore[return-value]

    def score_items(self, queries: Sequence[Query], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per query the score ``recommend`` ranks by ([h, −α] · [e_i, log p̃_i]) of each candidate item id."""
        return inner_product_scores(self.user_vectors(queries), self.search_vectors, candidates,
                                    self.catalogue.index, self.name)

    def tie_sorted(self, scores: np.ndarray, rows: np.ndarray, with_scores: bool = False):
        """Order faiss hits by score, equal scores by the catalogue's tie order (faiss leaves ties unspecified);
        with ``with_scores`` also their scores, in that order."""
        valid = rows >= 0
        scores, rows = scores[valid], rows[valid]
        order = np.lexsort((self.catalogue.tie_position[rows], -scores))
        return (rows[order], scores[order]) if with_scores else rows[order]
