"""Slow, obviously-correct references for the fast decoding paths (tests and benchmarks compare against them).

* :func:`exact_recommend` — scores *every* item of the user's domain: ``log P(SID tokens, EOS | prompt)`` from one
  full forward of ``prompt + SID + EOS`` per item (no cache, no padding), then ranks. Beam search with at least as
  many beams as items must return exactly this ranking (same items, same order up to ties).
* :func:`allowed_next_tokens` — the set of tokens that may follow a prefix, by scanning every SID.
* :class:`DictPrefixAllowedTokens` — the approach peers use: ``prefix_allowed_tokens_fn`` over a Python dict keyed
  by the full generated prefix, called once per row per step (a correct trie, just slow).
* :class:`PerRowDictProcessor` — the benchmark baseline: a logits processor that behaves like the peers' ones
  (MiniOneRec / LC-Rec): that dict looked up row by row, ``mask[row, allowed] = 0`` on a fresh ``-inf`` tensor,
  then ``scores + mask``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from data_builders.prompts import DEFAULT_MAX_HISTORY
from decoding.catalogue import Catalogue
from decoding.recommend import history_prompts


def allowed_next_tokens(sequences: np.ndarray, prefix: Sequence[int], eos_token_id: int) -> set[int]:
    """Tokens allowed after ``prefix`` given all SIDs ``sequences`` [N, L]: next tokens of matching SIDs, {EOS}
    after a complete SID, ``set()`` for a prefix that matches nothing."""
    t = len(prefix)
    if t > sequences.shape[1]:
        return set()
    match = (sequences[:, :t] == np.asarray(prefix, dtype=sequences.dtype)).all(axis=1)
    if not match.any():
        return set()
    return {eos_token_id} if t == sequences.shape[1] else set(sequences[match, t].tolist())


@torch.no_grad()
def exact_scores(model, tokenizer, catalogue: Catalogue, history: Sequence[str], domain: str | None = None,
                 max_history: int = DEFAULT_MAX_HISTORY, batch_size: int = 64) -> list[tuple[str, float]]:
    """Every item of ``domain`` (None = all) with ``log P(SID, EOS | prompt)``, best first. O(items) forwards."""
    prompt = tokenizer(history_prompts(tokenizer, catalogue, [history], max_history)[0])["input_ids"]
    rows = np.flatnonzero([domain is None or d == domain for d in catalogue.domains])
    sids = catalogue.token_ids(tokenizer)[rows]  # [n, L]
    eos = torch.full((len(rows), 1), tokenizer.eos_token_id, dtype=torch.long)
    targets = torch.cat([torch.from_numpy(sids), eos], dim=1)  # [n, L+1]
    seqs = torch.cat([torch.tensor(prompt).expand(len(rows), -1), targets], dim=1).to(model.device)  # [n, P+L+1]
    scores = []
    for start in range(0, len(rows), batch_size):
        chunk = seqs[start:start + batch_size]
        logits = model(input_ids=chunk).logits[:, len(prompt) - 1:-1].float()  # [b, L+1, V] predicts targets
        logp = F.log_softmax(logits, dim=-1)
        scores.append(logp.gather(2, chunk[:, len(prompt):, None]).squeeze(2).sum(1).cpu())
    scores = torch.cat(scores)
    order = torch.argsort(scores, descending=True, stable=True)
    return [(catalogue.item_ids[rows[i]], float(scores[i])) for i in order.tolist()]


def exact_recommend(model, tokenizer, catalogue: Catalogue, histories: list[list[str]], k: int = 10,
                    domains: list[str | None] | None = None,
                    max_history: int = DEFAULT_MAX_HISTORY) -> list[list[tuple[str, float]]]:
    """:func:`exact_scores` truncated to ``k`` for each user — the ground truth for beam search."""
    domains = domains or [None] * len(histories)
    return [exact_scores(model, tokenizer, catalogue, h, d, max_history)[:k] for h, d in zip(histories, domains)]


class DictPrefixAllowedTokens:
    """``prefix_allowed_tokens_fn(batch_id, input_ids) -> list[int]`` backed by ``{prefix tuple: [next ids]}``.

    A per-row Python callback (HF builds a dense mask row by row): the naive baseline the processor replaces.
    """

    def __init__(self, sequences: np.ndarray, prompt_length: int, eos_token_id: int):
        self.prompt_length = prompt_length
        self.eos = [int(eos_token_id)]
        self.next: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for seq in np.asarray(sequences).tolist():
            for t in range(len(seq)):
                self.next[tuple(seq[:t])].append(seq[t])
        self.next = {p: sorted(set(v)) for p, v in self.next.items()}
        self.levels = np.asarray(sequences).shape[1]

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        prefix = tuple(input_ids[self.prompt_length:].tolist())
        if len(prefix) >= self.levels:
            return self.eos
        return self.next.get(prefix, self.eos)


class PerRowDictProcessor(LogitsProcessor):
    """A faithful stand-in for the peers' constrained-decoding processors (written here, not copied).

    What MiniOneRec and LC-Rec do per decoding step (their processors wrap a ``prefix_allowed_tokens_fn`` over a
    dict of prefixes, like HF's ``PrefixConstrainedLogitsProcessor`` before it gained an "unsatisfiable" check):
    a fresh dense ``-inf`` mask [R, V]; for every row, its generated tokens as a tuple, a dict lookup of the
    allowed next ids, ``mask[row, allowed] = 0``; then ``scores + mask`` (a second dense tensor). The constraint
    is the same as :func:`decoding.processor.constrain_scores` for steps 0..L (tested), so beams are identical.
    MiniOneRec's processor also re-applies ``log_softmax`` over the full vocabulary every step; that is left out
    (HF beam search already passes log-probs), which makes this baseline *faster* than theirs: ratios against it
    are conservative.
    """

    def __init__(self, allowed: DictPrefixAllowedTokens):
        self.allowed = allowed

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        mask = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            mask[row, self.allowed(row, input_ids[row])] = 0
        return scores + mask
