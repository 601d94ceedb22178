"""Morph operators (seed 000 §3.3.3): a per-user linear map P_u turns the generic query v_seed into q_u = P_u v_seed.

* Low rank (Mini_XPERT, eq. 6-7): P_u = I + A_u B_uᵀ with A_u, B_u ∈ R^{d×r}. q = v + A_u (B_uᵀ v) is computed
  right to left, ≈ 4dr FLOPs, and the d×d matrix is never formed. 2dr personalisation parameters per user.
* Full rank (XPERT): P_u = I + M_u with M_u ∈ R^{d×d}; q = v + M_u v, 2d² FLOPs, d² parameters per user.

Both operators are generated per user by a hypernetwork from the user state h_u (eq. 8):
A_u = reshape(W_A h_u + b_A), B_u = reshape(W_B h_u + b_B), M_u = reshape(W_M h_u + b_M), W ∈ R^{(d·r)×hidden}
(the seed's "(d−r)" is a typo: the output must hold d·r numbers).

>>> v = torch.randn(2, 8); A = torch.randn(2, 8, 3); B = torch.randn(2, 8, 3)
>>> torch.allclose(low_rank_morph(v, A, B), explicit_low_rank_morph(v, A, B), atol=1e-5)
True
"""

from __future__ import annotations

import torch
from torch import nn


def low_rank_morph(v: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """q = v + A (Bᵀ v), per row. v [N, d]; A, B [N, d, r] -> [N, d]. Never materialises I + A Bᵀ."""
    t = torch.einsum("ndr,nd->nr", B, v)  # [N, r]  Bᵀ v first: 2dr FLOPs
    return v + torch.einsum("ndr,nr->nd", A, t)  # [N, d]  then A t: 2dr FLOPs


def explicit_low_rank_morph(v: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Slow reference for :func:`low_rank_morph`: forms P = I + A Bᵀ [N, d, d] and multiplies."""
    P = torch.eye(v.shape[1], dtype=v.dtype) + A @ B.transpose(1, 2)  # [N, d, d]
    return torch.einsum("nij,nj->ni", P, v)


def full_rank_morph(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """q = (I + M) v, per row. v [N, d]; M [N, d, d] -> [N, d]."""
    return v + torch.einsum("nij,nj->ni", M, v)


class LowRankHypernet(nn.Module):
    """h_u [N, hidden] -> (A_u, B_u), each [N, d, r].

    W_B and b_B start at zero, so B_u = 0 and an untrained model is exactly its seed query (q = v_seed, the
    bi-encoder); W_A keeps PyTorch's default init so B receives gradient from the first step (as in LoRA).
    """

    def __init__(self, hidden: int, dim: int, rank: int):
        super().__init__()
        self.dim, self.rank = dim, rank
        self.to_a, self.to_b = nn.Linear(hidden, dim * rank), nn.Linear(hidden, dim * rank)
        nn.init.zeros_(self.to_b.weight)
        nn.init.zeros_(self.to_b.bias)

    @property
    def params_per_user(self) -> int:
        return 2 * self.dim * self.rank

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(h), self.dim, self.rank)
        return self.to_a(h).view(shape), self.to_b(h).view(shape)  # [N, d, r] each

    def morph(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """q = v + A_u (B_uᵀ v). v [N, d]; h [N, hidden] -> [N, d] (not normalised)."""
        return low_rank_morph(v, *self(h))


class FullRankHypernet(nn.Module):
    """h_u [N, hidden] -> M_u [N, d, d]. Starts at M = 0 (identity morph), like :class:`LowRankHypernet`."""

    def __init__(self, hidden: int, dim: int):
        super().__init__()
        self.dim = dim
        self.to_m = nn.Linear(hidden, dim * dim)  # (d²) × hidden weights: 37.7M at d = 384, hidden = 256
        nn.init.zeros_(self.to_m.weight)
        nn.init.zeros_(self.to_m.bias)

    @property
    def params_per_user(self) -> int:
        return self.dim * self.dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.to_m(h).view(len(h), self.dim, self.dim)  # [N, d, d]

    def morph(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return full_rank_morph(v, self(h))
