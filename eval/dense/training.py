"""Training of the dense user towers: InfoNCE (τ = 0.05) over domain-pure mini-batches, AdamW, peak RSS.

Examples are the training rows: history (the last ``history_len`` items) -> target. Each mini-batch holds rows of a
single domain when the candidate rule ranks within the domain, so the in-batch negatives come from the set the
evaluation ranks (cross-domain negatives would be trivially easy). A batch that holds the same target twice does
not use it as a negative for either row (see :func:`eval.dense.losses.info_nce`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from data_builders.cli import check, check_choice, check_range, check_seed
from eval.dense.losses import domain_nce, info_nce

log = logging.getLogger(__name__)
PAD = -1  # history padding (item rows are 0-based)


@dataclass
class DenseTrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1.0e-3
    tau: float = 0.05  # InfoNCE temperature: logits = cos / τ, so ±20 for unit vectors
    negatives: str = "in_batch"  # in_batch (seed 000) | domain (every item of the row's domain)
    seed: int = 0

    def __post_init__(self) -> None:
        """Bad settings are :class:`~data_builders.cli.UserError`s naming the key, raised before training."""
        where = "dense training"
        check_choice("negatives", self.negatives, ("in_batch", "domain"), where=where)
        check_range("epochs", self.epochs, 1, where=where)
        check_range("batch_size", self.batch_size, 2, where=where)  # in-batch negatives need a second row
        for key in ("lr", "tau"):
            value = getattr(self, key)
            check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{where}: `{key}`",
                  f"must be a finite number > 0, got {value!r}")
        check_seed("seed", self.seed, where=where)


@dataclass
class Examples:
    history: torch.Tensor  # [R, L] item rows, oldest first, right-padded with PAD
    lengths: torch.Tensor  # [R] ≥ 1
    targets: torch.Tensor  # [R] item rows
    groups: torch.Tensor  # [R] candidate group (domain index, or 0 for one global group)


# rows [M] (item rows, or N + g for group g's default vector) -> item vectors [M, d], differentiable if trained
ItemLookup = Callable[[torch.Tensor], torch.Tensor]


def group_batches(groups: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled mini-batches, each from one group; a group's last partial batch is kept (if ≥ 2 rows)."""
    batches = []
    for g in groups.unique():
        rows = torch.nonzero(groups == g).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        batches += [b for b in rows.split(batch_size) if len(b) >= 2]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def batch_inputs(lookup: ItemLookup, ex: Examples, idx: torch.Tensor):
    """hist [B, L', d] (zeros at padding), lengths [B], positive vectors [B, d] for example rows ``idx``."""
    lengths = ex.lengths[idx]
    rows = ex.history[idx][:, : int(lengths.max())]  # [B, L'] drop all-padding columns
    b, width = rows.shape
    vectors = lookup(torch.cat([rows.clamp(min=0).flatten(), ex.targets[idx]]))  # one lookup: [B·L' + B, d]
    hist = vectors[: b * width].view(b, width, -1) * (rows != PAD)[..., None]
    return hist, lengths, vectors[b * width:]


def train_tower(tower: nn.Module, lookup: ItemLookup, extra_params: list[nn.Parameter], ex: Examples,
                group_items: list[torch.Tensor], cfg: DenseTrainConfig, desc: str,
                epoch_hook: Callable[[int], None] | None = None) -> dict:
    """Train ``tower`` (and ``extra_params``, e.g. encoder layers) in place; ``epoch_hook(epoch)`` after each epoch.

    group_items: per group the item rows it ranks (only for ``negatives=domain``). Returns the train log
    ``{"epoch_losses", "seconds", "examples", "steps"}``.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in [*tower.parameters(), *extra_params] if p.requires_grad]
    # fused AdamW: one kernel for all parameters; ~2x faster steps on CPU than the per-tensor loop here
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=True)
    losses, steps, start = [], 0, time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch")
    for epoch in bar:
        tower.train()
        total, n = 0.0, 0
        for idx in group_batches(ex.groups, cfg.batch_size, generator):
            hist, lengths, pos = batch_inputs(lookup, ex, idx)
            q = tower(hist, lengths)  # [B, d]
            if cfg.negatives == "in_batch":
                loss = info_nce(q, pos, cfg.tau, ex.targets[idx])
            else:
                cands = group_items[int(ex.groups[idx[0]])]  # [M] item rows of the batch's group
                target = torch.searchsorted(cands, ex.targets[idx])  # cands is sorted
                loss = domain_nce(q, lookup(cands), target, cfg.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n, steps = total + loss.item(), n + 1, steps + 1
        losses.append(total / max(n, 1))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if epoch_hook is not None:
            tower.eval()
            epoch_hook(epoch)
    tower.eval()
    return {"epoch_losses": [round(x, 4) for x in losses], "seconds": round(time.perf_counter() - start, 2),
            "examples": len(ex.targets), "steps": steps}
