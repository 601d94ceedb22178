"""Score given items under a generative model: ``log P(SID(item), EOS | prompt)`` for any candidate, not only beams.

Beam search (:mod:`decoding.beam`) finds the model's best items; re-ranking and hybrid retrieval also need the model's
score of items some other retriever proposed. :func:`score_items` computes exactly the quantity beam search ranks by
(raw log-softmax, EOS included; a test checks equality on the beams), teacher-forced: one prefill per prompt, the
KV cache repeated once per candidate, then one forward of the L SID tokens (the logits at the prompt's last position
score the first token, the one at SID position t the token t + 1, and the last one EOS).

>>> scores = score_items(model, tok, catalogue, [["i1", "i2"]], [["i7", "i4", "i9"]])  # doctest: +SKIP
>>> scores[0]  # doctest: +SKIP
array([-1.23, -2.01, -7.5])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data_builders.prompts import DEFAULT_MAX_HISTORY
from decoding.beam import _prefill
from decoding.catalogue import Catalogue
from decoding.recommend import encode_prompts, history_prompts


@torch.no_grad()
def score_items(model, tokenizer, catalogue: Catalogue, histories: Sequence[Sequence[str]],
                candidates: Sequence[Sequence[str]], batch_size: int = 16, max_rows: int = 512,
                max_history: int = DEFAULT_MAX_HISTORY, prefix_levels: int | None = None) -> list[np.ndarray]:
    """Per history, float64 ``log P(SID(c), EOS | prompt)`` of each of its candidate item ids (any number, any order).

    ``prefix_levels`` = p < L scores only the first p SID tokens instead, ``log P(SID(c)[:p] | prompt)`` (no EOS):
    the part of a SID the model can judge for an item whose last codes it never saw (decoding/cold_start.py).

    Prompts are processed ``batch_size`` at a time and at most ``max_rows`` (prompt, candidate) pairs per forward
    (a prompt with more candidates than that still gets one forward of its own). Raises KeyError for an unknown
    history or candidate item and ValueError for mismatched lengths or a tokenizer without EOS.
    """
    if len(candidates) != len(histories):
        raise ValueError(f"{len(candidates)} candidate lists for {len(histories)} histories")
    if batch_size < 1 or max_rows < 1:
        raise ValueError(f"batch_size={batch_size}, max_rows={max_rows}: both must be >= 1")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; a SID's score includes its closing EOS")
    token_ids = torch.from_numpy(catalogue.token_ids(tokenizer))  # [N, L]
    if prefix_levels is not None:
        if not 1 <= prefix_levels <= token_ids.shape[1]:
            raise ValueError(f"prefix_levels={prefix_levels}: must be in [1, {token_ids.shape[1]}] (SID length)")
        token_ids = token_ids[:, :prefix_levels]
    rows = []
    for user, items in enumerate(candidates):
        try:
            rows.append([catalogue.row(item) for item in items])
        except KeyError as e:
            raise KeyError(f"candidates of history {user}: {e.args[0]}") from None
    out: list[np.ndarray] = [np.zeros(0, dtype=np.float64) for _ in histories]
    for group in _groups([len(r) for r in rows], batch_size, max_rows):
        group = [u for u in group if rows[u]]
        if group:
            scores = _score_group(model, tokenizer, catalogue, [histories[u] for u in group],
                                  [token_ids[rows[u]] for u in group], int(tokenizer.eos_token_id), max_history,
                                  eos=prefix_levels is None)
            for u, s in zip(group, scores):
                out[u] = s
    return out


def _groups(counts: list[int], batch_size: int, max_rows: int) -> list[list[int]]:
    """Consecutive users, at most ``batch_size`` per group and ``max_rows`` candidates (unless one user has more)."""
    groups: list[list[int]] = [[]]
    total = 0
    for user, n in enumerate(counts):
        if groups[-1] and (len(groups[-1]) == batch_size or total + n > max_rows):
            groups.append([])
            total = 0
        groups[-1].append(user)
        total += n
    return [g for g in groups if g]


def _score_group(model, tokenizer, catalogue: Catalogue, histories, sids: list[torch.Tensor], eos_id: int,
                 max_history: int, eos: bool = True) -> list[np.ndarray]:
    device = model.device
    ids, mask = encode_prompts(tokenizer, history_prompts(tokenizer, catalogue, histories, max_history), device)
    logp0, cache, mask, position = _prefill(model, ids, mask)  # [b, V]; the cache of the b prompts
    counts = torch.tensor([len(s) for s in sids])
    parent = torch.repeat_interleave(torch.arange(len(sids)), counts).to(device)  # [R] prompt of each pair
    tokens = torch.cat(sids).to(device)  # [R, L]
    total = logp0[parent].gather(1, tokens[:, :1]).squeeze(1)
    if not eos:  # a prefix: its first token from the prefill, the others teacher-forced, no closing EOS
        if tokens.shape[1] > 1:
            total = total + _forced(model, cache, mask, position, parent, tokens[:, :-1], tokens[:, 1:])
        return [t.numpy().astype(np.float64) for t in total.cpu().split(counts.tolist())]
    nxt = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], eos_id)], dim=1)  # [R, L]
    total = total + _forced(model, cache, mask, position, parent, tokens, nxt)
    return [t.numpy().astype(np.float64) for t in total.cpu().split(counts.tolist())]


def _forced(model, cache, mask, position, parent: torch.Tensor, tokens: torch.Tensor, nxt: torch.Tensor
            ) -> torch.Tensor:
    """Sum over t of log P(nxt[:, t] | prompt, tokens[:, :t+1]): each pair on its prompt's repeated cache."""
    device = tokens.device
    levels = tokens.shape[1]
    cache.reorder_cache(parent)  # each prompt's cache repeated once per candidate
    mask = torch.cat([mask[parent], mask.new_ones(len(parent), levels)], dim=1)
    position = position[parent] + torch.arange(1, levels + 1, device=device)[None, :]
    logits = model(input_ids=tokens, attention_mask=mask, position_ids=position, past_key_values=cache,
                   use_cache=True).logits  # [R, L, V]: position t predicts nxt[:, t]
    return F.log_softmax(logits.float(), dim=-1).gather(2, nxt[:, :, None]).squeeze(2).sum(1)
