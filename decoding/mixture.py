"""Beam search for GenCDR (seed 001): the user router's mixture of two next-token distributions inside the trie.

At each SID level and beam, the universal path (base + universal experts) and the domain path (+ the row's domain
LoRA) each give a distribution over the tokens the trie allows after the beam's prefix (in the row's domain, or over
every item with the global trie); each is renormalised over those tokens and mixed::

    P(t | prefix) = α(user) · P_universal(t | prefix, allowed) + (1 − α(user)) · P_domain(t | prefix, allowed)

so the mixture sums to one over the allowed tokens and beam search can only produce valid SIDs. α comes from the
router on the universal path's prompt representation (:class:`sft.cross_domain.UserRouter`), or is fixed (α = 1:
universal path only; α = 0: domain path only). A beam's score is ``Σ_l log P(t_l | prefix)`` (the EOS after a full
SID is the only allowed token, probability one). Each path keeps its own KV cache; the prompt is encoded once per
path, as in :mod:`decoding.beam`.

``constrained=False`` is the "w/o prefix tree" ablation: the same mixture over the full vocabulary (no
renormalisation), L free steps, then EOS; SIDs that are no item of the catalogue come back with ``leaves == -1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from decoding.beam import BeamResult, _beam_step, _decode, prefill_forward
from decoding.trie import TrieTables, small_ops
from sft.experts import routed


def _prefill_path(model, input_ids, attention_mask, domains, want_hidden: bool):
    with routed(model, universal=True, domains=domains):
        out, position = prefill_forward(model, input_ids, attention_mask, output_hidden_states=want_hidden)
    hidden = out.hidden_states[-1][:, -1].float() if want_hidden else None
    return F.log_softmax(out.logits[:, -1, :].float(), dim=-1), out.past_key_values, position, hidden


def mix_allowed(logp_u: torch.Tensor, logp_d: torch.Tensor | None, alpha: torch.Tensor, allowed: torch.Tensor,
                cols: torch.Tensor) -> torch.Tensor:
    """log of the α-mixture of the two distributions, each renormalised over ``allowed`` (the trie's allowed columns
    ``cols`` of this level): logp_* [R, V], alpha [R], allowed [R, W] -> [R, W] (−inf where not allowed)."""
    def renorm(logp):
        x = logp[:, cols].masked_fill(~allowed, float("-inf"))
        return x - torch.logsumexp(x, dim=-1, keepdim=True).clamp(min=-1e30)

    lu = renorm(logp_u)
    if logp_d is None:
        return lu
    ld = renorm(logp_d)
    a = alpha.clamp(1e-6, 1 - 1e-6).unsqueeze(1)
    return torch.logaddexp(a.log() + lu, (1 - a).log() + ld).masked_fill(~allowed, float("-inf"))


@torch.no_grad()
def mixture_beam_search(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, tables: TrieTables,
                        roots: torch.Tensor, num_beams: int, eos_token_id: int, domains: torch.Tensor | None,
                        alpha: torch.Tensor | None = None, router=None, router_domains: torch.Tensor | None = None,
                        constrained: bool = True, global_root: int = 0) -> tuple[BeamResult, torch.Tensor]:
    """Returns the beams and the α used per user [B].

    domains: int64 [B] domain adapter slot per user (None: no domain path, universal only); alpha: fixed α [B]
    (ignored when ``router`` is given: α = router(h_universal, router_domains)); roots: trie root per user;
    global_root: the root of every item (``trie.root(None)``), where unconstrained SIDs are looked up.
    """
    batch = input_ids.shape[0]
    logp_u, cache_u, position, hidden = _prefill_path(model, input_ids, attention_mask, None, router is not None)
    if router is not None:
        alpha = router(hidden, router_domains if router_domains is not None else domains)[0]
    if domains is None:
        alpha = torch.ones(batch)
    alpha = alpha.float().to(logp_u.device)
    two_paths = domains is not None and bool((alpha < 1).any())
    cache_d = logp_d = None
    if two_paths:
        logp_d, cache_d, _, _ = _prefill_path(model, input_ids, attention_mask, domains, False)
    mask_u = attention_mask
    scores = torch.zeros(batch, 1, device=logp_u.device)
    node = roots.to(logp_u.device).view(batch, 1)
    tokens = torch.zeros(batch, 1, 0, dtype=torch.long, device=logp_u.device)
    vocab = logp_u.shape[-1]
    for level in range(tables.levels):
        width = scores.shape[1]
        row_alpha = alpha.repeat_interleave(width)
        with small_ops(logp_u.device):
            if constrained:
                cols = tables.vocab[level]
                allowed = tables.allowed_codes(level, node.reshape(-1))  # [B*w, W]
                mixed = mix_allowed(logp_u, logp_d, row_alpha, allowed, cols)  # [B*w, W]
                full = logp_u.new_full((batch * width, vocab), float("-inf"))
                full[:, cols] = mixed
                scores, node, tokens, rows = _beam_step(tables, level, full.view(batch, width, -1), scores, node,
                                                        tokens, num_beams, eos_token_id)
            else:
                mixed = logp_u if logp_d is None else torch.logaddexp(
                    row_alpha.clamp(1e-6, 1 - 1e-6).log()[:, None] + logp_u,
                    (1 - row_alpha).clamp(1e-6, 1).log()[:, None] + logp_d)
                scores, tokens, rows = _free_step(mixed.view(batch, width, -1), scores, tokens, num_beams)
        cache_u.reorder_cache(rows)
        mask_u, position_next = mask_u[rows], position[rows]
        last = tokens[:, :, -1].reshape(-1, 1)
        with routed(model, universal=True, domains=None):
            logp_u, mask_next, position_u = _decode(model, last, cache_u, mask_u, position_next)
        if two_paths:
            cache_d.reorder_cache(rows)
            with routed(model, universal=True, domains=domains):
                logp_d, _, _ = _decode(model, last, cache_d, mask_u, position_next)
        mask_u, position = mask_next, position_u
    if constrained:
        leaves = node
    else:  # the free SIDs that are items of the catalogue (any domain: the global root), the others invalid
        start = torch.full((batch * num_beams,), global_root, dtype=torch.long, device=tokens.device)
        leaves = tables.walk(start, tokens.reshape(batch * num_beams, -1)).view(batch, num_beams)
        row_alpha = alpha.repeat_interleave(num_beams)
        eos = logp_u[:, eos_token_id] if logp_d is None else torch.logaddexp(
            row_alpha.clamp(1e-6, 1 - 1e-6).log() + logp_u[:, eos_token_id],
            (1 - row_alpha).clamp(1e-6, 1).log() + logp_d[:, eos_token_id])
        scores = scores + eos.view(batch, num_beams)
        scores = torch.where(leaves >= 0, scores, torch.full_like(scores, float("-inf")))
    scores, order = scores.sort(dim=1, descending=True)
    tokens = tokens.gather(1, order[:, :, None].expand_as(tokens))
    return BeamResult(tokens=tokens, leaves=leaves.gather(1, order), scores=scores.float()), alpha


def _free_step(logp: torch.Tensor, scores: torch.Tensor, tokens: torch.Tensor, num_beams: int):
    """An unconstrained beam step over the whole vocabulary: logp [B, w, V] -> K beams each + parent rows."""
    batch, width, vocab = logp.shape
    cand = (scores[:, :, None] + logp).flatten(1)  # [B, w*V]
    top, idx = cand.topk(num_beams, dim=1)
    origin, token = idx // vocab, idx % vocab
    history = tokens.gather(1, origin[:, :, None].expand(-1, -1, tokens.shape[2]))
    rows = (torch.arange(batch, device=idx.device)[:, None] * width + origin).reshape(-1)
    return top, torch.cat([history, token[:, :, None]], dim=2), rows
