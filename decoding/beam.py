"""Trie beam search that encodes each prompt once (prefill once, then expand the KV cache to the beams).

HF ``generate(num_beams=K)`` copies every prompt K times *before* the first forward, so the prompt is encoded K
times; SIDs are only 3-5 tokens, so that prefill dominates decoding. Here the prompt batch [B, P] is encoded once,
and the cache rows are then gathered to [B*K] by the first beam reordering (an ``index_select`` that repeats rows).

The search itself is HF's beam search restricted to the trie: at every step each user's K best (beam, token)
continuations by summed log-prob (log-softmax over the *full* vocabulary, then masked — as HF applies logits
processors after ``log_softmax``), and after L SID tokens the EOS log-prob is added. So a score is
``log P(SID tokens, EOS | prompt)``, identical to HF beam search with ``length_penalty=0`` and
:class:`decoding.processor.SidTrieLogitsProcessor` (tested), and to :mod:`decoding.reference`.
Only valid continuations are ever candidates, so there are no junk beams: a user with fewer than K items (in its
domain) gets fewer valid beams, marked by ``leaves == -1`` and ``scores == -inf``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from decoding.trie import TrieTables, small_ops


@dataclass
class BeamResult:
    """Per user, K beams sorted by score (best first)."""

    tokens: torch.Tensor  # [B, K, L] SID token ids
    leaves: torch.Tensor  # [B, K] leaf node id (-1 = no valid beam)
    scores: torch.Tensor  # [B, K] float32 log P(SID, EOS | prompt); -inf where invalid


@torch.no_grad()
def trie_beam_search(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, tables: TrieTables, roots: torch.Tensor,
    num_beams: int, eos_token_id: int,
) -> BeamResult:
    """Constrained beam search over ``tables`` with one prefill per prompt.

    input_ids, attention_mask: [B, P] left-padded prompts; roots: int64 [B] trie root per user (its domain).

    >>> result = trie_beam_search(model, ids, mask, trie.tables("cpu"), roots, num_beams=10,
    ...                           eos_token_id=tok.eos_token_id)  # doctest: +SKIP
    >>> result.scores.shape  # doctest: +SKIP
    torch.Size([2, 10])
    """
    batch = input_ids.shape[0]
    logp, cache, mask, position = _prefill(model, input_ids, attention_mask)  # [B, V]
    scores = torch.zeros(batch, 1, device=logp.device)  # [B, w]: one live beam per user before the first token
    node = roots.to(logp.device).view(batch, 1)  # [B, w]
    tokens = torch.zeros(batch, 1, 0, dtype=torch.long, device=logp.device)  # [B, w, t]
    for level in range(tables.levels):
        with small_ops(logp.device):  # [B, K*W] candidates: tiny next to the model
            scores, node, tokens, rows = _beam_step(tables, level, logp.view(batch, scores.shape[1], -1), scores,
                                                    node, tokens, num_beams, eos_token_id)
        cache.reorder_cache(rows)  # [B*K] rows of the previous step; at level 0 this repeats each prompt K times
        mask, position = mask[rows], position[rows]
        logp, mask, position = _decode(model, tokens[:, :, -1].reshape(-1, 1), cache, mask, position)  # [B*K, V]
    scores = scores + logp.view(batch, num_beams, -1)[:, :, eos_token_id]  # [B, K]: EOS closes every SID
    scores, order = scores.sort(dim=1, descending=True)
    tokens = tokens.gather(1, order[:, :, None].expand_as(tokens))
    return BeamResult(tokens=tokens, leaves=node.gather(1, order), scores=scores.float())


def _beam_step(tables: TrieTables, level: int, logp: torch.Tensor, scores: torch.Tensor, node: torch.Tensor,
               tokens: torch.Tensor, num_beams: int, eos_token_id: int):
    """One step: logp [B, w, V], scores/node [B, w], tokens [B, w, t] -> K beams each, plus the flat parent rows."""
    batch, width = scores.shape
    cols = tables.vocab[level]  # [W] the only tokens that can occur at this level
    allowed = tables.allowed_codes(level, node.reshape(-1)).view(batch, width, -1)  # [B, w, W]
    cand = torch.where(allowed, scores[:, :, None] + logp[:, :, cols], float("-inf")).flatten(1)  # [B, w*W]
    if cand.shape[1] < num_beams:  # fewer (beam, token) pairs than beams: pad with impossible candidates
        cand = F.pad(cand, (0, num_beams - cand.shape[1]), value=float("-inf"))
    top, idx = cand.topk(num_beams, dim=1)  # [B, K]
    valid = torch.isfinite(top)
    origin = (idx // len(cols)).clamp_(max=width - 1)  # [B, K] parent beam
    token = torch.where(valid, cols[idx % len(cols)], eos_token_id)  # [B, K]; dead beams feed EOS, harmlessly
    parent = node.gather(1, origin)  # [B, K]
    child = tables.child(level, parent.reshape(-1), token.reshape(-1)).view(batch, num_beams)
    child = torch.where(valid, child, torch.full_like(child, -1))
    history = tokens.gather(1, origin[:, :, None].expand(-1, -1, tokens.shape[2]))  # [B, K, t]
    rows = (torch.arange(batch, device=idx.device)[:, None] * width + origin).reshape(-1)  # [B*K]
    return top, child, torch.cat([history, token[:, :, None]], dim=2), rows


def _prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Encode the prompts once; positions follow HF generate (cumsum of the mask, so left padding is invisible)."""
    out, position = prefill_forward(model, input_ids, attention_mask)
    logp = F.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B, V]
    return logp, out.past_key_values, attention_mask, position


def prefill_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs):
    """The prompt forward of :func:`_prefill` (fresh KV cache, last-position logits only): (output, position [B, 1]);
    ``kwargs`` go to the model (``output_hidden_states=True`` for the prompt representation)."""
    from transformers import DynamicCache

    position = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # [B, P]
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}  # else [B, P, V]: ~350 MB for 16 prompts
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position, past_key_values=cache,
                use_cache=True, **extra, **kwargs)
    return out, position[:, -1:]


def _accepts_logits_to_keep(model) -> bool:
    """Whether the forward that finally runs takes ``logits_to_keep``: a PeftModel's ``forward(**kwargs)`` hides
    it, so look through to the base model (PEFT passes the keyword on to it)."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _decode(model, token: torch.Tensor, cache, mask: torch.Tensor, position: torch.Tensor):
    """One cached forward of token [R, 1]; returns (logp [R, V], grown mask [R, P+t+1], position [R, 1])."""
    mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    position = position + 1
    out = model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache, use_cache=True)
    return F.log_softmax(out.logits[:, -1, :].float(), dim=-1), mask, position
