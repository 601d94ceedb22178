"""Shared pieces of the torch sequence baselines (SASRec, STARS): id tensors, next-item losses, the training loop.

Item rows are shifted by one so that 0 is padding: token ``n + 1`` = catalogue row ``n``. Histories are
left-padded, so the last position always holds the most recent item. Softmaxes run over the row's domain only
(:class:`DomainSoftmax`), the same candidate set the evaluation ranks.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from eval.recommenders import CandidateRule, Catalogue, Query, RankedList, ranked_lists

log = logging.getLogger(__name__)
PAD = 0


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def encode_histories(histories: Sequence[Sequence[str]], index: dict[str, int], max_len: int) -> torch.Tensor:
    """Left-padded token ids of the last ``max_len`` items: [B, max_len] int64 (unknown items dropped).

    >>> encode_histories([["a", "b"]], {"a": 0, "b": 1}, 3).tolist()
    [[0, 1, 2]]
    """
    out = torch.zeros(len(histories), max_len, dtype=torch.long)
    for b, hist in enumerate(histories):
        ids = [index[i] + 1 for i in hist if i in index][-max_len:]
        if ids:
            out[b, -len(ids):] = torch.tensor(ids)
    return out


def shifted_examples(rows: Sequence[dict], index: dict[str, int], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-item labels at every position: sequence = history + [target], last ``max_len + 1`` items.

    Returns inputs [R, max_len] and labels [R, max_len] (label 0 = no loss), both left-padded.
    """
    seqs = encode_histories([[*r["history"], r["target"]] for r in rows], index, max_len + 1)  # [R, L+1]
    inputs, labels = seqs[:, :-1].clone(), seqs[:, 1:].clone()
    labels[inputs == PAD] = PAD  # the first item has no context to be predicted from
    return inputs, labels


class DomainSoftmax:
    """Next-item losses whose softmax runs over the row's domain only (or the whole catalogue).

    Rows are grouped by domain and each group is scored against its own items, so no logit is computed for an item
    the evaluation could never rank (half the work of masking a full-catalogue softmax on two domains).
    """

    def __init__(self, catalogue: Catalogue, same_domain: bool = True):
        groups = catalogue.domain_ids if same_domain else np.zeros(len(catalogue), dtype=int)
        self.tokens = [torch.from_numpy(np.flatnonzero(groups == g)) + 1 for g in range(groups.max() + 1)]
        self.local = torch.zeros(len(catalogue) + 1, dtype=torch.long)  # token -> position inside its group
        for toks in self.tokens:
            self.local[toks] = torch.arange(len(toks))
        self.group_of_domain = [int(groups[catalogue.domain_ids == d][0]) if (catalogue.domain_ids == d).any() else 0
                                for d in range(len(catalogue.domains))]

    def _grouped(self, hidden: torch.Tensor, labels: torch.Tensor, row_domain: torch.Tensor):
        """Yield (h [M, d], labels [M], group tokens [n_g]) per group, for positions with a label."""
        keep = labels != PAD  # [B, L]
        h, y = hidden[keep], labels[keep]  # [M, d], [M]
        group = torch.tensor(self.group_of_domain)[row_domain][:, None].expand_as(labels)[keep]  # [M]
        for g, toks in enumerate(self.tokens):
            sel = group == g
            if sel.any():
                yield h[sel], y[sel], toks

    def full_loss(self, hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, row_domain: torch.Tensor,
                  item_bias: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over every candidate of the row's group.

        hidden [B, L, d]; items [N + 1, d]; labels [B, L] (0 = no loss); row_domain [B]; item_bias [N + 1] or None.
        """
        total, count = hidden.new_zeros(()), 0
        for h, y, toks in self._grouped(hidden, labels, row_domain):
            logits = h @ items[toks].T  # [M_g, n_g]
            if item_bias is not None:
                logits = logits + item_bias[toks]
            total = total + F.cross_entropy(logits, self.local[y], reduction="sum")
            count += len(y)
        return total / max(count, 1)

    def sampled_loss(self, hidden: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, row_domain: torch.Tensor,
                     num_negatives: int, generator: torch.Generator) -> torch.Tensor:
        """Softmax over the target and ``num_negatives`` uniform negatives of its group, shared by the batch.

        Uniform sampling has a constant log-Q, so no correction is needed; accidental hits are masked.
        """
        total, count = hidden.new_zeros(()), 0
        for h, y, toks in self._grouped(hidden, labels, row_domain):
            neg = toks[torch.randint(0, len(toks), (num_negatives,), generator=generator)]  # [S]
            pos_logit = (h * items[y]).sum(-1, keepdim=True)  # [M_g, 1]
            neg_logit = (h @ items[neg].T).masked_fill(neg[None, :] == y[:, None], float("-inf"))  # [M_g, S]
            logits = torch.cat([pos_logit, neg_logit], dim=1)  # the target is class 0
            total = total + F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long), reduction="sum")
            count += len(y)
        return total / max(count, 1)


@dataclass
class TrainSettings:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    seed: int = 0
    time_budget_minutes: float = 0.0  # > 0: stop after the first epoch that ends past this wall-clock budget


def length_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled mini-batches of similar length (sorted by length with random ties, chunked, chunks shuffled).

    Short histories then share batches, and :func:`trim_padding` drops the all-pad columns: about half the
    transformer work on this data, where the median history has 4 items of 10.
    """
    noise = torch.rand(len(lengths), generator=generator)
    order = torch.argsort(lengths.double() + noise.double() * 0.5)  # noise < 1 only shuffles within a length
    chunks = list(order.split(batch_size))
    return [chunks[i] for i in torch.randperm(len(chunks), generator=generator)]


def trim_padding(tokens: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop leading columns that are padding in every row of a left-padded batch [B, L] (and the same columns of
    ``others``)."""
    width = max(int((tokens != PAD).sum(1).max()), 1)
    return (tokens[:, -width:], *(o[:, -width:] for o in others))


def train_loop(model: torch.nn.Module, lengths: torch.Tensor, batch_loss: Callable[[torch.Tensor, int], torch.Tensor],
               settings: TrainSettings, generator: torch.Generator, desc: str,
               on_epoch: Callable[[int], None] | None = None) -> dict:
    """AdamW over length-bucketed shuffled mini-batches; ``batch_loss(example_indices, epoch) -> scalar``.

    lengths: [R] history length per example. Returns ``{"epoch_losses", "seconds", "epoch_seconds"}``, plus
    ``"stopped_by_time_budget": True`` when ``settings.time_budget_minutes`` ended training before ``epochs``.
    """
    # Every parameter goes to the optimiser: one frozen for a few epochs (requires_grad False) gets no grad and
    # AdamW skips it, so unfreezing later needs no new optimiser.
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    losses, start = [], time.perf_counter()
    bar = tqdm(range(settings.epochs), desc=desc, unit="epoch")
    for epoch in bar:
        if on_epoch is not None:
            on_epoch(epoch)
        model.train()
        total, steps = 0.0, 0
        for idx in length_batches(lengths, settings.batch_size, generator):
            loss = batch_loss(idx, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        elapsed = time.perf_counter() - start
        if settings.time_budget_minutes and elapsed >= 60 * settings.time_budget_minutes and \
                epoch + 1 < settings.epochs:
            log.warning("%s: time budget of %g min used after %d of %d epochs (%.0f s per epoch)", desc,
                        settings.time_budget_minutes, epoch + 1, settings.epochs, elapsed / (epoch + 1))
            stopped = True
            break
    else:
        stopped = False
    bar.close()
    model.eval()
    seconds = time.perf_counter() - start
    out = {"epoch_losses": [round(x, 4) for x in losses], "seconds": round(seconds, 2),
           "epoch_seconds": round(seconds / max(len(losses), 1), 2)}
    return {**out, "stopped_by_time_budget": True} if stopped else out


@torch.inference_mode()
def recommend_from_vectors(user: torch.Tensor, items: torch.Tensor, item_bias: torch.Tensor | None,
                           queries: Sequence[Query], k: int, catalogue: Catalogue,
                           rule: CandidateRule) -> list[RankedList]:
    """Exact top-k by inner product among the rule's candidates (with their scores, for tie-aware ranking).
    user [B, d]; items [N, d]; item_bias [N] or None."""
    scores = (user @ items.T).double().numpy()  # [B, N]
    if item_bias is not None:
        scores = scores + item_bias.double().numpy()[None, :]
    scores[~catalogue.candidate_mask(queries, rule)] = -np.inf
    return ranked_lists(scores, k, catalogue)
