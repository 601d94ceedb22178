"""Finite scalar quantisation (FSQ): a learned projection to m bounded, rounded dimensions.

Encoder z = f(e) ∈ R^m; each dimension i is squashed and rounded to one of L_i levels,
ẑ_i = round((L_i − 1)·σ(z_i)) ∈ {0, …, L_i − 1}, with straight-through gradients (the forward pass uses the rounded
value, the backward pass the identity). A decoder reconstructs e from ẑ; training minimises the reconstruction MSE.

Dimensions are grouped ``group_size`` at a time into SID positions: a group's code is its mixed-radix number
(first dimension least significant), so a position has Π_{i∈group} L_i tokens and the implicit codebook is Π L_i.
There is no codebook to collapse: every level value exists by construction (utilisation is still reported).

Training runs on one CPU thread: its steps are small matmuls (batch 512 x 384 x 256), where OpenMP barriers cost
more than they save — measured 8x faster than two threads on a busy 2-core machine — and one thread makes the
trained weights independent of the machine's core count.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(500, 16)).astype("float32")
>>> model = fit_fsq(x, fsq_levels=(4, 4, 4, 4), group_size=2, seed=0, epochs=2)
>>> encode_fsq(model, x).shape  # 2 positions of 16 codes each
(500, 2)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def fsq_quantize(z: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """ẑ = round((L − 1)·σ(z)) with straight-through gradients: z [B, m], levels [m] -> float [B, m] in {0..L−1}."""
    scaled = (levels - 1) * torch.sigmoid(z)
    return scaled + (torch.round(scaled) - scaled).detach()


class FSQAutoencoder(nn.Module):
    """MLP encoder -> FSQ -> MLP decoder. ``hidden = 0`` makes both maps linear."""

    def __init__(self, dim: int, fsq_levels: Sequence[int], hidden: int = 256):
        super().__init__()
        m = len(fsq_levels)
        self.register_buffer("levels", torch.tensor([float(v) for v in fsq_levels]))
        if hidden:
            self.encoder = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, m))
            self.decoder = nn.Sequential(nn.Linear(m, hidden), nn.GELU(), nn.Linear(hidden, dim))
        else:
            self.encoder, self.decoder = nn.Linear(dim, m), nn.Linear(m, dim)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d] -> level values [B, m] (float, integral in the forward pass)."""
        return fsq_quantize(self.encoder(x), self.levels)

    def decode(self, q: torch.Tensor) -> torch.Tensor:
        """Level values [B, m] -> reconstruction [B, d]; inputs are rescaled to [−1, 1] first."""
        return self.decoder(2.0 * q / (self.levels - 1) - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize(x))


class FSQModel:
    """A trained FSQ autoencoder plus its SID layout (``group_size`` dimensions per position)."""

    def __init__(self, net: FSQAutoencoder, fsq_levels: Sequence[int], group_size: int):
        self.net, self.fsq_levels, self.group_size = net, [int(v) for v in fsq_levels], int(group_size)

    @property
    def codebook_sizes(self) -> list[int]:
        """Tokens per SID position: Π L_i over the position's group of dimensions."""
        g = self.group_size
        return [math.prod(self.fsq_levels[i:i + g]) for i in range(0, len(self.fsq_levels), g)]

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Weights as float32 numpy arrays (saved one .npy per tensor, byte-reproducibly)."""
        return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.net.state_dict().items()}


def _check_layout(fsq_levels: Sequence[int], group_size: int) -> None:
    if not fsq_levels or any(int(v) < 2 for v in fsq_levels):
        raise ValueError(f"fsq_levels must be a non-empty list of integers >= 2, got {list(fsq_levels)}")
    if group_size < 1 or len(fsq_levels) % group_size:
        raise ValueError(f"group_size={group_size} must divide the number of FSQ dimensions ({len(fsq_levels)})")


def fit_fsq(
    embeddings: np.ndarray, fsq_levels: Sequence[int] = (16, 16, 16, 16, 16, 16), group_size: int = 2,
    seed: int = 0, hidden: int = 256, epochs: int = 20, batch_size: int = 512, lr: float = 1.0e-3,
    sample_size: int | None = None,
) -> FSQModel:
    """Train an FSQ autoencoder on embeddings [N, d] (CPU, seeded). Returns an :class:`FSQModel`."""
    _check_layout(fsq_levels, group_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see module docstring: small-batch steps, reproducible on any core count
    try:
        return _train(embeddings, fsq_levels, group_size, seed, hidden, epochs, batch_size, lr, sample_size)
    finally:
        torch.set_num_threads(threads)


def _train(embeddings, fsq_levels, group_size, seed, hidden, epochs, batch_size, lr, sample_size) -> FSQModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = np.arange(len(embeddings)) if not sample_size or sample_size >= len(embeddings) else \
        np.sort(rng.choice(len(embeddings), sample_size, replace=False))
    x = torch.from_numpy(np.ascontiguousarray(embeddings[rows], dtype=np.float32))
    net = FSQAutoencoder(x.shape[1], fsq_levels, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for epoch in tqdm(range(epochs), desc="fsq", leave=False):
        perm = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for start in range(0, len(x), batch_size):
            batch = x[perm[start:start + batch_size]]
            loss = ((net(batch) - batch) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        log.debug("fsq epoch %d: reconstruction %.4f", epoch, total / len(x))
    net.eval()
    return FSQModel(net, fsq_levels, group_size)


@torch.no_grad()
def fsq_values(model: FSQModel, embeddings: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Per-dimension level values: embeddings [N, d] -> int64 [N, m] with 0 ≤ value < L_i."""
    out = [model.net.quantize(torch.from_numpy(np.ascontiguousarray(embeddings[s:s + chunk], dtype=np.float32)))
           for s in range(0, len(embeddings), chunk)]
    return torch.cat(out).round().long().numpy()


def values_to_codes(values: np.ndarray, fsq_levels: Sequence[int], group_size: int) -> np.ndarray:
    """Mixed-radix grouping: values [N, m] -> codes [N, m / group_size] (first dimension least significant)."""
    codes = np.zeros((len(values), len(fsq_levels) // group_size), dtype=np.int64)
    for position in range(codes.shape[1]):
        radix = 1
        for i in range(position * group_size, (position + 1) * group_size):
            codes[:, position] += values[:, i] * radix
            radix *= int(fsq_levels[i])
    return codes


def codes_to_values(codes: np.ndarray, fsq_levels: Sequence[int], group_size: int) -> np.ndarray:
    """Inverse of :func:`values_to_codes`: codes [N, P] -> values [N, m]."""
    values = np.zeros((len(codes), len(fsq_levels)), dtype=np.int64)
    for position in range(codes.shape[1]):
        rest = codes[:, position].copy()
        for i in range(position * group_size, (position + 1) * group_size):
            values[:, i], rest = rest % int(fsq_levels[i]), rest // int(fsq_levels[i])
    return values


def encode_fsq(model: FSQModel, embeddings: np.ndarray) -> np.ndarray:
    """embeddings [N, d] -> SID codes int64 [N, positions]."""
    return values_to_codes(fsq_values(model, embeddings), model.fsq_levels, model.group_size)


@torch.no_grad()
def fsq_reconstruction_errors(model: FSQModel, embeddings: np.ndarray, codes: np.ndarray) -> list[float]:
    """Mean squared error of the decoder after each cumulative SID position 0..P.

    Positions not yet "known" are replaced by their mean level value over the data, so entry 0 is the error of
    decoding the average item and the last entry is the full reconstruction error.
    """
    values = torch.from_numpy(codes_to_values(codes, model.fsq_levels, model.group_size)).float()  # [N, m]
    x = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    mean = values.mean(0, keepdim=True).expand_as(values)
    errors = []
    for known in range(codes.shape[1] + 1):
        q = mean.clone()
        q[:, :known * model.group_size] = values[:, :known * model.group_size]
        errors.append(float(((model.net.decode(q) - x) ** 2).sum(1).mean()))
    return errors
