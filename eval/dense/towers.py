"""User towers: history item vectors -> one query vector q_u, scored against item vectors by inner product.

A history arrives as ``hist`` [B, L, d] (item vectors, oldest first, **right**-padded with zeros) and ``lengths``
[B] (≥ 1; an empty history is replaced by the domain's default vector before it gets here, see
eval/dense/recommenders.py).

* Bi-encoder (no personalisation): q = normalise(last item) or normalise(mean of the items).
* Mini_XPERT: h_u = LSTM(history) (the state after the newest item), q = normalise(v_seed + A_u (B_uᵀ v_seed)).
* XPERT: h_u = tanh(W mean(history)), q = normalise((I + M_u) v_seed) with v_seed = the history mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data_builders.cli import UserError, check_choice, check_range
from eval.dense.morph import FullRankHypernet, LowRankHypernet


def check_dim(x: torch.Tensor, dim: int, what: str) -> None:
    """Raise a clear error when the last dimension of ``x`` is not the model's embedding dimension."""
    if x.shape[-1] != dim:
        raise ValueError(f"{what}: embedding dimension {x.shape[-1]} does not match the model's d = {dim} "
                         "(item embeddings from another encoder?)")


def history_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """bool [B, L]: True at the real (right-padded) history positions."""
    return torch.arange(max_len)[None, :] < lengths[:, None]


def seed_query(hist: torch.Tensor, lengths: torch.Tensor, how: str) -> torch.Tensor:
    """The generic query: the newest item (``last``) or the history mean (``mean``), unit norm. -> [B, d]."""
    if how == "last":
        v = hist[torch.arange(len(hist)), lengths - 1]  # [B, d]
    elif how == "mean":
        mask = history_mask(lengths, hist.shape[1])[..., None].to(hist.dtype)  # [B, L, 1]
        v = (hist * mask).sum(1) / lengths[:, None].to(hist.dtype)  # [B, d]
    else:
        raise ValueError(f"query {how!r}: choose last | mean")
    return F.normalize(v, dim=-1)


class LSTMAdapter(nn.Module):
    """h_u = the LSTM state after the newest real item (packed, so padding never enters the state)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)

    def forward(self, hist: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if bool((lengths == hist.shape[1]).all()):  # no padding (e.g. one query at serving time): skip packing
            return self.lstm(hist)[1][0][0]  # h_n [1, B, hidden] -> [B, hidden]
        packed = nn.utils.rnn.pack_padded_sequence(hist, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n [1, B, hidden], in the input order
        return h_n[0]


class MeanAdapter(nn.Module):
    """h_u = tanh(W mean(history) + b): mean pooling, as XPERT; the "w/o LSTM" ablation of Mini_XPERT."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, hist: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = history_mask(lengths, hist.shape[1])[..., None].to(hist.dtype)  # [B, L, 1]
        mean = (hist * mask).sum(1) / lengths[:, None].to(hist.dtype)  # [B, d]
        return torch.tanh(self.proj(mean))  # [B, hidden]


@dataclass
class TowerConfig:
    dim: int = 384  # item embedding size d (all-MiniLM-L6-v2)
    morph: str = "low_rank"  # low_rank (Mini_XPERT) | full_rank (XPERT)
    rank: int = 32  # r: higher = more personalisation, 2dr parameters per user
    adapter: str = "lstm"  # lstm | mean (how h_u summarises the history)
    hidden: int = 256  # size of h_u (the seed's LSTM hidden 256)
    seed_vector: str = "last"  # v_seed: last | mean history item

    def __post_init__(self) -> None:
        """Bad settings are :class:`UserError`s naming the key, raised before anything is built or trained."""
        choices = {"morph": ("low_rank", "full_rank"), "adapter": ("lstm", "mean"), "seed_vector": ("last", "mean")}
        for key, allowed in choices.items():
            check_choice(key, getattr(self, key), allowed, where="dense tower")
        for key in ("dim", "hidden", "rank"):
            check_range(key, getattr(self, key), 1, where="dense tower")
        if self.morph == "low_rank" and self.rank > self.dim:
            raise UserError(f"dense tower: `rank` r={self.rank} must be at most the item vectors' d={self.dim}")


class MorphTower(nn.Module):
    """(hist [B, L, d], lengths [B]) -> q [B, d], unit norm: q = normalise(P_u v_seed), P_u from h_u."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        self.adapter = (LSTMAdapter if cfg.adapter == "lstm" else MeanAdapter)(cfg.dim, cfg.hidden)
        self.hypernet = (LowRankHypernet(cfg.hidden, cfg.dim, cfg.rank) if cfg.morph == "low_rank"
                         else FullRankHypernet(cfg.hidden, cfg.dim))

    @property
    def params_per_user(self) -> int:
        """Numbers generated per user: 2dr (low rank) or d² (full rank)."""
        return self.hypernet.params_per_user

    def forward(self, hist: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        check_dim(hist, self.cfg.dim, "history item vectors")
        v = seed_query(hist, lengths, self.cfg.seed_vector)  # [B, d]
        h = self.adapter(hist, lengths)  # [B, hidden]
        return F.normalize(self.hypernet.morph(v, h), dim=-1)  # [B, d]
