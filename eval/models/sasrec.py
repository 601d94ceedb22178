"""SASRec: next-item prediction with causal self-attention over item-ID embeddings (Kang & McAuley, 2018).

The plain model is the classic one: learned positions, LayerNorm, GELU MLP, random item embeddings, output scores
tied to the input embeddings (score_i = h · e_i). Options from seed 003 ("SASRec with pretrained semantic
initialisation"): item embeddings initialised from the item text embeddings (PCA to ``dim``), first trained frozen
for ``freeze_item_epochs`` and then together with the rest; RoPE instead of learned positions; RMSNorm; SiLU-gated
MLP. Training uses full softmax (or sampled softmax) over the row's domain, at every position or only the last.

Example::

    rec = SASRecRecommender(SASRecConfig(epochs=20), CandidateRule())
    rec.fit(dataset, train_rows, embeddings)
    rec.recommend([Query(0, "u1", "Office_Products", ("Office_Products:3",))], k=10)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eval.recommenders import CandidateRule, Catalogue, Query, inner_product_scores
from eval.models.training import (PAD, DomainSoftmax, TrainSettings, encode_histories, recommend_from_vectors,
                           seed_everything, shifted_examples, train_loop, trim_padding)

log = logging.getLogger(__name__)


@dataclass
class SASRecConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 10  # newest history items seen; eval.run sets it from `history_len` (default: the dataset's)
    dropout: float = 0.2
    positions: str = "learned"  # learned | rope
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu | silu_gated
    init: str = "random"  # random | semantic (PCA of the item text embeddings)
    freeze_item_epochs: int = 0  # semantic init: epochs with frozen item embeddings before joint training
    loss: str = "full"  # full | sampled
    num_negatives: int = 256  # sampled softmax only
    loss_positions: str = "all"  # all (every next item in the window) | last (the row's target only)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    seed: int = 0
    time_budget_minutes: float = 0.0  # > 0: stop after the epoch that passes it (eval/models/training.py)

    def __post_init__(self) -> None:
        choices = {"positions": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"),
                   "mlp": ("gelu", "silu_gated"), "init": ("random", "semantic"), "loss": ("full", "sampled"),
                   "loss_positions": ("all", "last")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"SASRec {key}={getattr(self, key)!r}; choose from {allowed}")
        if self.dim % self.heads or (self.positions == "rope" and (self.dim // self.heads) % 2):
            raise ValueError(f"SASRec dim {self.dim} must split into {self.heads} heads (of even size for RoPE)")


def rope_tables(length: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [length, head_dim / 2] for rotary position embeddings."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # [Dh/2]
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [L, Dh/2]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of ``x`` [B, H, L, Dh] by position; q·k then depends on relative position only."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # [B, H, L, Dh/2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, rope: bool):
        super().__init__()
        self.heads, self.dropout, self.rope = heads, dropout, rope
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)  # [B,H,L,Dh]
        if self.rope:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, length, dim))  # [B, L, D]


class FeedForward(nn.Module):
    def __init__(self, dim: int, kind: str, dropout: float):
        super().__init__()
        self.gated = kind == "silu_gated"
        hidden = 4 * dim
        self.up = nn.Linear(dim, 2 * hidden if self.gated else hidden)
        self.down, self.drop = nn.Linear(hidden, dim), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            a, g = h.chunk(2, dim=-1)
            h = F.silu(g) * a
        else:
            h = F.gelu(h)
        return self.down(self.drop(h))


def make_norm(kind: str, dim: int) -> nn.Module:
    return nn.RMSNorm(dim) if kind == "rmsnorm" else nn.LayerNorm(dim)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.norm1, self.norm2 = make_norm(cfg.norm, cfg.dim), make_norm(cfg.norm, cfg.dim)
        self.attn = SelfAttention(cfg.dim, cfg.heads, cfg.dropout, cfg.positions == "rope")
        self.mlp, self.drop = FeedForward(cfg.dim, cfg.mlp, cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask, rope))
        return x + self.drop(self.mlp(self.norm2(x)))


def causal_padding_mask(tokens: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, L, L], True = may attend: earlier-or-same real positions (a pad query attends to itself)."""
    length = tokens.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # [L, L]
    real_key = (tokens != PAD)[:, None, None, :]  # [B, 1, 1, L]
    return (causal & real_key) | torch.eye(length, dtype=torch.bool)  # the diagonal keeps pad rows finite


class SASRec(nn.Module):
    """tokens [B, L] (0 = pad, left-padded) -> hidden states [B, L, dim]; scores = hidden @ item_matrix().T."""

    def __init__(self, cfg: SASRecConfig, n_items: int, init_vectors: np.ndarray | None = None):
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(n_items + 1, cfg.dim, padding_idx=PAD)
        nn.init.normal_(self.items.weight, std=cfg.dim ** -0.5)  # unit-norm-ish vectors
        if init_vectors is not None:
            with torch.no_grad():
                self.items.weight[1:] = torch.from_numpy(init_vectors)
        with torch.no_grad():
            self.items.weight[PAD] = 0.0
        self.pos = nn.Embedding(cfg.max_len, cfg.dim) if cfg.positions == "learned" else None
        if self.pos is not None:  # same scale as the items: the default N(0, 1) would drown them 8:1 at dim 64
            nn.init.normal_(self.pos.weight, std=cfg.dim ** -0.5)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.final_norm, self.drop = make_norm(cfg.norm, cfg.dim), nn.Dropout(cfg.dropout)
        cos, sin = rope_tables(cfg.max_len, cfg.dim // cfg.heads)  # [L, Dh/2] each
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def item_matrix(self) -> torch.Tensor:
        """[N + 1, dim] output item vectors (tied to the input embeddings; row 0 = padding)."""
        return self.items.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.items(tokens)  # [B, L, D]
        if self.pos is not None:
            x = x + self.pos.weight[-length:][None]  # left padding: the last position is always the newest item
        x = self.drop(x) * (tokens != PAD)[..., None]
        mask, rope = causal_padding_mask(tokens), (self.rope_cos[:length], self.rope_sin[:length])
        for block in self.blocks:
            x = block(x, mask, rope)
        return self.final_norm(x)  # [B, L, D]


def semantic_init(text: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Item text embeddings [N, d_text] -> [N, dim] by PCA, scaled to the random init's spread (std dim^-1/2)."""
    centred = text - text.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # rows of vt: principal directions
    comps = vt[:dim]
    if comps.shape[0] < dim:  # fewer text dims than model dims: pad with small random directions
        extra = np.random.default_rng(seed).normal(size=(dim - comps.shape[0], text.shape[1]))
        comps = np.concatenate([comps, 1e-3 * extra])
    proj = centred @ comps.T  # [N, dim]
    return (proj / proj.std() * dim ** -0.5).astype(np.float32)


class SASRecRecommender:
    """The :class:`~eval.recommenders.Recommender` wrapper: trains SASRec in ``fit``, ranks by h_last · e_i."""

    def __init__(self, config: SASRecConfig, rule: CandidateRule, name: str = "sasrec", tie_seed: int = 0):
        self.cfg, self.rule, self.name, self.tie_seed = config, rule, name, tie_seed
        self.train_log: dict[str, Any] = {}
        self.epoch_hook: Callable[[int], None] | None = None  # called before each epoch (e.g. validation curves)

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        cfg = self.cfg
        gen = seed_everything(cfg.seed)
        self.catalogue = Catalogue.from_dataset(dataset, self.tie_seed)
        if cfg.init == "semantic" and embeddings is None:
            raise ValueError(f"{self.name}: init=semantic needs the item embeddings (config `embeddings`)")
        init = semantic_init(embeddings, cfg.dim, cfg.seed) if cfg.init == "semantic" else None
        self.model = SASRec(cfg, len(self.catalogue), init)
        inputs, labels = shifted_examples(train_rows, self.catalogue.index, cfg.max_len)  # [R, L] each
        if cfg.loss_positions == "last":
            labels[:, :-1] = PAD
        row_domain = torch.tensor([self.catalogue.domains.index(r["domain"]) for r in train_rows])  # [R]
        softmax = DomainSoftmax(self.catalogue, self.rule.same_domain)

        def batch_loss(idx: torch.Tensor, epoch: int) -> torch.Tensor:
            tokens, targets = trim_padding(inputs[idx], labels[idx])  # [B, L'] each
            hidden = self.model(tokens)  # [B, L', D]
            if cfg.loss == "sampled":
                return softmax.sampled_loss(hidden, self.model.item_matrix(), targets, row_domain[idx],
                                            cfg.num_negatives, gen)
            return softmax.full_loss(hidden, self.model.item_matrix(), targets, row_domain[idx])

        def on_epoch(epoch: int) -> None:  # seed 003: stage 1 trains around frozen semantic item vectors
            self.model.items.weight.requires_grad_(epoch >= cfg.freeze_item_epochs)
            if self.epoch_hook is not None:
                self.epoch_hook(epoch)

        settings = TrainSettings(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.seed,
                                 cfg.time_budget_minutes)
        lengths = (inputs != PAD).sum(1)  # [R]
        self.train_log = train_loop(self.model, lengths, batch_loss, settings, gen, self.name, on_epoch)
        self.train_log["examples"] = len(inputs)
        self.train_log["config"] = asdict(cfg)
        log.info("%s: %d windows, final loss %.3f, %.1f s", self.name, len(inputs),
                 self.train_log["epoch_losses"][-1], self.train_log["seconds"])

    @torch.inference_mode()
    def vectors(self, queries: Sequence[Query]) -> tuple[torch.Tensor, torch.Tensor]:
        """(user [B, D] = the state after the newest item, items [N, D]); score_i = user · items_i."""
        tokens = encode_histories([q.history for q in queries], self.catalogue.index, self.cfg.max_len)
        return self.model(tokens)[:, -1], self.model.item_matrix()[1:]

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        user, items = self.vectors(queries)
        return recommend_from_vectors(user, items, None, queries, k, self.catalogue, self.rule)

    def score_items(self, queries: Sequence[Query], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per query the score ``recommend`` ranks by (h_last · e_i) of each of its candidate item ids."""
        user, items = self.vectors(queries)
        return inner_product_scores(user.numpy(), items.detach().numpy(), candidates, self.catalogue.index,
                                    self.name)
