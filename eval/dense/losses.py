"""InfoNCE (seed 000 eq. 9) with in-batch negatives, and the same loss over every item of a domain."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, pos: torch.Tensor, tau: float, item_ids: torch.Tensor | None = None) -> torch.Tensor:
    """L = −1/N Σ_k log( exp(q_k·v_k/τ) / Σ_j exp(q_k·v_j/τ) ): row k's negatives are the other rows' positives.

    q [N, d] queries; pos [N, d] their positive item vectors; item_ids [N] (optional) the positives' item rows:
    a column holding the same item as row k's positive (another user bought it too) is not a negative for row k
    and is masked out. Returns a scalar.

    >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> round(info_nce(q, q, tau=1.0).item(), 4)   # log(1 + e^-1) = 0.3133
    0.3133
    """
    logits = q @ pos.T / tau  # [N, N], the diagonal holds the positives
    if item_ids is not None:
        repeat = (item_ids[:, None] == item_ids[None, :]) & ~torch.eye(len(q), dtype=torch.bool)
        logits = logits.masked_fill(repeat, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(q)))


def domain_nce(q: torch.Tensor, items: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """Softmax over every candidate: −1/N Σ_k log softmax(q_k · items / τ)[target_k].

    q [N, d]; items [M, d] (the batch's domain); target [N] positions in ``items``.
    """
    return F.cross_entropy(q @ items.T / tau, target)
