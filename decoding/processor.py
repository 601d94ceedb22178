"""Trie-constrained decoding as an HF logits processor: every generated SID is a real item.

:func:`constrain_scores` is the whole rule, vectorised over rows (no Python loop over rows, no ``.tolist()``):

* step ``t < L``: only the SID tokens that extend the row's prefix in its domain's trie keep their score;
* step ``t == L`` (a complete SID): only EOS;
* step ``t > L`` (the row finished; greedy/sampling keep calling): EOS and pad;
* everything else -> ``-inf``, including padded vocabulary rows (logits width may exceed ``len(tokenizer)``).

A row whose prefix is not in the trie (only HF beam search makes such rows, from ``-inf`` candidates when there
are fewer valid continuations than beams) gets EOS only, so it ends without ever decoding unconstrained.

Cost: the masked output is dense [R, V] (R = users x beams, V ~ 50k), so a fresh ``-inf`` tensor per step is the
expensive part (a 64 MB allocation at 320 x 50k: page faults + fill, ~25 ms on CPU, vs < 1 ms for the trie
logic). With ``reuse_output=True`` the processor writes into one preallocated :class:`MaskBuffer` instead: its
columns outside the SID token range stay ``-inf`` from step to step, so each step re-fills only the SID columns
(and EOS/pad) and copies the allowed scores in — the same values as the fresh tensor (tested), no allocation.

>>> proc = SidTrieLogitsProcessor(trie, roots=[trie.root(None)] * 2, eos_token_id=tok.eos_token_id,
...                               pad_token_id=tok.pad_token_id)  # doctest: +SKIP
>>> model.generate(**batch, logits_processor=LogitsProcessorList([proc]), generation_config=cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor

from decoding.trie import SidTrie, TrieTables, small_ops


class MaskBuffer:
    """A reusable [R, V] output for :func:`constrain_scores`: ``-inf`` everywhere except the columns the last step
    wrote, which all lie in the SID token range ``[tables.min_token_id, tables.max_token_id]`` or are EOS/pad.

    :meth:`take` returns it ready for the next step: only the SID range and EOS/pad columns are re-filled with
    ``-inf`` ([R, ~levels x codes] instead of [R, V]). A buffer of another shape/dtype/device is re-created; one
    that someone else modified in place since the last step (its version counter moved; or an inference-mode
    tensor, which has none) is re-filled in full, in place.
    """

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None
        self._version: int | None = None
        self._columns: tuple | None = None  # (first SID id, last SID id, eos, pad) of the last step

    def take(self, scores: torch.Tensor, tables: TrieTables, eos_token_id: int,
             pad_token_id: int | None) -> torch.Tensor:
        out = self.tensor
        columns = (tables.min_token_id, tables.max_token_id, eos_token_id, pad_token_id)
        if out is None or out.shape != scores.shape or out.dtype != scores.dtype or out.device != scores.device:
            self.tensor = out = torch.full_like(scores, float("-inf"))
        elif self._version is None or _version(out) != self._version or columns != self._columns:
            out.fill_(float("-inf"))  # changed by someone else (or untracked), or another trie/EOS: all of it
        else:
            out[:, tables.min_token_id:tables.max_token_id + 1] = float("-inf")
            out[:, eos_token_id] = float("-inf")
            if pad_token_id is not None:
                out[:, pad_token_id] = float("-inf")
        self._columns, self._version = columns, None  # "dirty" until written() records this step's version
        return out

    def written(self) -> None:
        """Record the version after this step's writes (a later in-place change by anyone else is detected)."""
        self._version = _version(self.tensor)


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; None for inference-mode tensors, which do not track one."""
    try:
        return tensor._version
    except RuntimeError:
        return None


def constrain_scores(
    scores: torch.Tensor, tables: TrieTables, roots: torch.Tensor, generated: torch.Tensor, eos_token_id: int,
    pad_token_id: int | None = None, buffer: MaskBuffer | None = None,
) -> torch.Tensor:
    """Mask ``scores`` [R, V] to the tokens the trie allows after ``generated`` [R, t] (tokens after the prompt).

    roots: int64 [R] root node per row (its domain). Returns [R, V] with disallowed ids ``-inf``: a new tensor, or
    with ``buffer`` the buffer's tensor (overwritten by the next call with the same buffer). ``scores`` is never
    modified.
    """
    if tables.max_token_id >= scores.shape[1]:
        raise ValueError(f"SID token ids go up to {tables.max_token_id} but the logits have only {scores.shape[1]} "
                         "columns; resize the model's embeddings after adding the SID tokens")
    if buffer is None:
        out = torch.full_like(scores, float("-inf"))  # [R, V]: a fresh dense tensor, the expensive part
        with small_ops(scores.device):
            return _constrain_scores(out, scores, tables, roots, generated, eos_token_id, pad_token_id)
    out = buffer.take(scores, tables, eos_token_id, pad_token_id)  # [R, V], -inf; re-filled over the SID range only
    with small_ops(scores.device):
        _constrain_scores(out, scores, tables, roots, generated, eos_token_id, pad_token_id)
    buffer.written()
    return out


def _constrain_scores(out, scores, tables, roots, generated, eos_token_id, pad_token_id) -> torch.Tensor:
    """Write the allowed scores into ``out`` [R, V] (all ``-inf`` on entry); returns ``out``."""
    step = generated.shape[1]
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

    reuse_output: return one reused buffer (see :class:`MaskBuffer`) instead of a fresh [R, V] tensor per step —
    the same values, without the per-step allocation; the buffer survives :meth:`reset`, so one instance serving
    many batches allocates once. Each call overwrites the previous call's result, so use it only where the
    processed scores are not kept across steps: HF beam search copies them before storing (``output_scores``),
    greedy/sampling store them *uncopied* when ``output_scores=True`` (leave ``reuse_output`` off there).
    :func:`decoding.recommend.recommend_with_generate` turns it on (its greedy/sampling configs keep raw logits,
    never processed scores). ``scores`` passed in is never modified in either mode.
    """

    def __init__(self, trie: SidTrie, roots: Sequence[int] | torch.Tensor, eos_token_id: int,
                 pad_token_id: int | None = None, reuse_output: bool = False):
        self.trie = trie
        self.eos_token_id = int(eos_token_id)
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)
        self.buffer = MaskBuffer() if reuse_output else None
        self.reset(roots)

    def reset(self, roots: Sequence[int] | torch.Tensor | None = None) -> None:
        """Forget the prompt length, so the instance can serve another ``generate`` call (with new ``roots``, one
        per prompt row, if given)."""
        if roots is not None:
            roots = torch.as_tensor(roots, dtype=torch.long)  # [B]
            if roots.ndim != 1 or len(roots) == 0:
                raise ValueError("roots must be a non-empty 1-D sequence of root node ids, one per prompt row")
            self.roots = roots
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
        return constrain_scores(scores, tables, roots, generated, self.eos_token_id, self.pad_token_id, self.buffer)
