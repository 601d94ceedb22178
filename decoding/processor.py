"""Trie-constrained decoding as an HF logits processor: every generated SID is a real item.

:func:`constrain_scores` is the whole rule, vectorised over rows (no Python loop over rows, no ``.tolist()``):

* step ``t < L``: only the SID tokens that extend the row's prefix in its domain's trie keep their score;
* step ``t == L`` (a complete SID): only EOS;
* step ``t > L`` (the row finished; greedy/sampling keep calling): EOS and pad;
* everything else -> ``-inf``, including padded vocabulary rows (logits width may exceed ``len(tokenizer)``).

A row whose prefix is not in the trie (only HF beam search makes such rows, from ``-inf`` candidates when there
are fewer valid continuations than beams) gets EOS only, so it ends without ever decoding unconstrained.

>>> proc = SidTrieLogitsProcessor(trie, roots=[trie.root(None)] * 2, eos_token_id=tok.eos_token_id,
...                               pad_token_id=tok.pad_token_id)  # doctest: +SKIP
>>> model.generate(**batch, logits_processor=LogitsProcessorList([proc]), generation_config=cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor

from decoding.trie import SidTrie, TrieTables, small_ops


def constrain_scores(
    scores: torch.Tensor, tables: TrieTables, roots: torch.Tensor, generated: torch.Tensor, eos_token_id: int,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Mask ``scores`` [R, V] to the tokens the trie allows after ``generated`` [R, t] (tokens after the prompt).

    roots: int64 [R] root node per row (its domain). Returns a new tensor [R, V]; disallowed ids are ``-inf``.
    """
    step = generated.shape[1]
    if tables.max_token_id >= scores.shape[1]:
        raise ValueError(f"SID token ids go up to {tables.max_token_id} but the logits have only {scores.shape[1]} "
                         "columns; resize the model's embeddings after adding the SID tokens")
    out = torch.full_like(scores, float("-inf"))  # [R, V]: the one dense write
    with small_ops(scores.device):
        if step >= tables.levels:
            keep = [eos_token_id] if step == tables.levels or pad_token_id is None else [eos_token_id, pad_token_id]
            keep = torch.tensor(sorted(set(keep)), device=scores.device)
            out[:, keep] = scores[:, keep]
            return out
        node = tables.walk(roots, generated)  # [R], -1 where the prefix left the trie
        allowed = tables.allowed_codes(step, node)  # [R, W]
        cols = tables.vocab[step]  # [W]
        out[:, cols] = torch.where(allowed, scores[:, cols], float("-inf"))
        dead = node < 0  # [R]
        out[:, eos_token_id] = torch.where(dead, scores[:, eos_token_id], out[:, eos_token_id])
    return out


def constrain_rows(
    scores: torch.Tensor, tables: TrieTables, roots: torch.Tensor, prefix: torch.Tensor, depth: torch.Tensor,
    eos_token_id: int, pad_token_id: int | None = None,
) -> torch.Tensor:
    """:func:`constrain_scores` for rows at *different* steps (vLLM's continuous batching).

    scores [R, V]; roots [R]; prefix [R, L] the first L generated tokens (any filler past a row's depth);
    depth [R] tokens generated so far. Loops over levels (<= L), never over rows; no host syncs.
    """
    out = torch.full_like(scores, float("-inf"))  # [R, V]
    with small_ops(scores.device):
        return _constrain_rows(out, scores, tables, roots, prefix, depth, eos_token_id, pad_token_id)


def _constrain_rows(out, scores, tables, roots, prefix, depth, eos_token_id, pad_token_id) -> torch.Tensor:
    levels = tables.levels
    nodes = [roots]  # nodes[d]: [R] node after d tokens
    for level in range(levels):
        nodes.append(tables.child(level, nodes[-1], prefix[:, level].contiguous()))
    node = torch.stack(nodes, dim=1).gather(1, depth.clamp(max=levels)[:, None]).squeeze(1)  # [R]
    for level in range(levels):  # rows at another depth see node -1 (nothing allowed); no host syncs
        at_level = torch.where(depth == level, node, -1)  # [R]
        cols = tables.vocab[level]  # [W]
        allowed = tables.allowed_codes(level, at_level)  # [R, W]
        out[:, cols] = torch.where(allowed, scores[:, cols], out[:, cols])  # keeps other levels' columns
    ends = (node < 0) | (depth >= levels)  # complete SIDs, and rows that left the trie, may only end
    out[:, eos_token_id] = torch.where(ends, scores[:, eos_token_id], out[:, eos_token_id])
    if pad_token_id is not None:  # a finished row (EOS already generated) may also pad
        out[:, pad_token_id] = torch.where(depth > levels, scores[:, pad_token_id], out[:, pad_token_id])
    return out


class SidTrieLogitsProcessor(LogitsProcessor):
    """HF ``LogitsProcessor`` constraining generation to the SIDs of ``trie``.

    roots: one root node per *user* (prompt row), e.g. ``[trie.root("Toys"), trie.root(None)]``; when ``generate``
    expands rows to beams/samples (row ``b * n + j`` belongs to user ``b``) they are repeated to match.
    The prompt length is ``input_ids.shape[1]`` at the first call, so constraints start at the first generated
    position whatever the template or tokenizer. One instance serves one ``generate`` call: a call that is not
    the next step of the previous one raises (use :meth:`reset` or a new instance).
    """

    def __init__(self, trie: SidTrie, roots: Sequence[int] | torch.Tensor, eos_token_id: int,
                 pad_token_id: int | None = None):
        self.trie = trie
        self.roots = torch.as_tensor(roots, dtype=torch.long)  # [B]
        if self.roots.ndim != 1 or len(self.roots) == 0:
            raise ValueError("roots must be a non-empty 1-D sequence of root node ids, one per prompt row")
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)
        self.reset()

    def reset(self) -> None:
        """Forget the prompt length, so the instance can serve another ``generate`` call."""
        self.prompt_length: int | None = None
        self._last_length: int | None = None

    def _check_step(self, input_ids: torch.Tensor) -> None:
        length = input_ids.shape[1]
        if self.prompt_length is None:
            self.prompt_length = length
        elif length != self._last_length + 1:
            raise RuntimeError(f"SidTrieLogitsProcessor saw sequence length {length} after {self._last_length}: "
                               "it serves one generate call; call reset() or build a new one per call")
        self._last_length = length

    def _row_roots(self, rows: int, device: torch.device) -> torch.Tensor:
        if rows % len(self.roots):
            raise ValueError(f"{rows} rows is not a multiple of the {len(self.roots)} prompts' roots")
        return self.roots.to(device).repeat_interleave(rows // len(self.roots))  # [R]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """input_ids [R, prompt + t], scores [R, V] -> masked scores [R, V]."""
        self._check_step(input_ids)
        tables = self.trie.tables(scores.device)
        roots = self._row_roots(input_ids.shape[0], scores.device)
        generated = input_ids[:, self.prompt_length:]  # [R, t]
        return constrain_scores(scores, tables, roots, generated, self.eos_token_id, self.pad_token_id)
