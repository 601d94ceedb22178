"""Trie-constrained *sampling* in vLLM (GPU machines, optional extra ``pip install genrec[vllm]``).

vLLM removed per-request logits processors from ``SamplingParams``; custom processors are engine-level classes
(``vllm.v1.sample.logits_processor.LogitsProcessor``: ``__init__(vllm_config, device, is_pin_memory)``,
``update_state(BatchUpdate | None)``, ``apply(logits)``, ``is_argmax_invariant()``, classmethod
``validate_params``) and per-request data travels in ``SamplingParams.extra_args``. This module:

* :class:`TrieBatchState` — the pure state machine (no vllm import; unit-tested on CPU): follows the persistent
  batch (``removed`` -> ``added`` -> ``moved``, moves one-way or swaps) and masks each constrained row with
  :func:`decoding.processor.constrain_rows` over the same trie tables as the HF processor.
* ``SidTrieVllmProcessor`` — the engine-facing class, created on first access (importing it without vllm raises
  a clear ImportError; importing this module never imports vllm).

Usage (the trie file is read inside vLLM's worker processes, hence a path, not an object)::

    export_trie_for_vllm(catalogue, tokenizer, "sid_trie.npz")
    os.environ["GENREC_SID_TRIE"] = "sid_trie.npz"   # before creating the engine; workers inherit it
    llm = LLM(model=ckpt, logits_processors=["decoding.vllm_adapter:SidTrieVllmProcessor"])
    params = SamplingParams(n=8, temperature=1.0, max_tokens=levels + 1, extra_args=sid_extra_args("Toys"))

Scope: the V1 model runner interface (on vLLM versions whose default is Model Runner V2, set
``VLLM_USE_V2_MODEL_RUNNER=0``); vLLM rejects custom logits processors under speculative decoding;
``LLM.beam_search`` ignores logits processors, so beam evaluation stays on the HF path (:mod:`decoding.recommend`).
Requests without the ``sid_domain`` extra arg are left unconstrained.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from decoding.processor import constrain_rows
from decoding.trie import SidTrie, load_trie, save_trie

ENV_TRIE = "GENREC_SID_TRIE"
EXTRA_KEY = "sid_domain"  # SamplingParams.extra_args key; value = domain name, or None for the whole catalogue
_CLASS_NAME = "SidTrieVllmProcessor"
_cached_class = None


def sid_extra_args(domain: str | None = None) -> dict[str, Any]:
    """``SamplingParams.extra_args`` that turn on trie decoding for a request (``domain=None`` = all items)."""
    return {EXTRA_KEY: domain}


def export_trie_for_vllm(catalogue, tokenizer, path) -> SidTrie:
    """Save the catalogue's trie under ``tokenizer`` plus the eos/pad ids to ``path`` (.npz)."""
    trie = catalogue.trie(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    save_trie(trie, path, eos_token_id=int(tokenizer.eos_token_id), pad_token_id=int(pad))
    return trie


class TrieBatchState:
    """Which batch rows are constrained, under which root, and their live output-token lists.

    ``output_ids`` are vLLM's own running lists (it appends to them), so ``apply`` always sees the latest tokens.
    """

    def __init__(self, trie: SidTrie, eos_token_id: int, pad_token_id: int | None = None,
                 device: torch.device | str = "cpu"):
        self.trie, self.eos, self.pad = trie, int(eos_token_id), pad_token_id
        self.device = torch.device(device)
        self.requests: dict[int, tuple[int, list[int]]] = {}  # batch index -> (root node, output token ids)

    def add(self, index: int, extra_args: dict | None, output_ids: list[int]) -> None:
        """A request joined at ``index`` (replacing whatever was there); constrained iff it asks for it."""
        self.requests.pop(index, None)
        if extra_args and EXTRA_KEY in extra_args:
            self.requests[index] = (self.trie.root(extra_args[EXTRA_KEY]), output_ids)

    def remove(self, index: int) -> None:
        self.requests.pop(index, None)

    def move(self, src: int, dst: int, swap: bool) -> None:
        """One-way ``src -> dst`` (``src`` becomes empty) or a two-way swap."""
        a, b = self.requests.pop(src, None), self.requests.pop(dst, None)
        if a is not None:
            self.requests[dst] = a
        if swap and b is not None:
            self.requests[src] = b

    def update(self, batch_update) -> None:
        """Apply a vLLM ``BatchUpdate`` (or None = no change) in vLLM's order: removed, added, moved."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.remove(index)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            self.add(index, getattr(params, "extra_args", None), output_ids)
        for src, dst, direction in batch_update.moved:
            self.move(src, dst, swap=getattr(direction, "name", str(direction)).upper().endswith("SWAP"))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask the constrained rows of ``logits`` [batch, V] in place; other rows untouched."""
        if not self.requests:
            return logits
        index = sorted(i for i in self.requests if i < logits.shape[0])
        levels = self.trie.levels
        roots = [self.requests[i][0] for i in index]
        outputs = [self.requests[i][1] for i in index]
        # the only per-request Python work: reading vLLM's token lists (at most L+1 ids each)
        prefix = [list(out[:levels]) + [-1] * (levels - min(len(out), levels)) for out in outputs]
        rows = torch.tensor(index, dtype=torch.long, device=logits.device)
        tables = self.trie.tables(logits.device)
        masked = constrain_rows(
            logits[rows], tables, torch.tensor(roots, device=logits.device),
            torch.tensor(prefix, dtype=torch.long, device=logits.device),
            torch.tensor([len(o) for o in outputs], device=logits.device), self.eos, self.pad)
        logits[rows] = masked
        return logits


def _trie_path(vllm_config) -> str:
    extra = getattr(vllm_config, "additional_config", None) or {}
    path = extra.get("genrec_sid_trie") if isinstance(extra, dict) else None
    path = path or os.environ.get(ENV_TRIE)
    if not path:
        raise RuntimeError(f"{_CLASS_NAME}: set ${ENV_TRIE} (or additional_config['genrec_sid_trie']) to a file "
                           "written by decoding.vllm_adapter.export_trie_for_vllm before creating the engine")
    return path


def _build_class():
    try:
        from vllm.v1.sample.logits_processor import LogitsProcessor
    except ImportError as e:
        raise ImportError(f"{_CLASS_NAME} needs vLLM (GPU machines: `pip install genrec[vllm]` in its own "
                          f"environment); the HF path decoding.recommend works without it ({e})") from None

    class SidTrieVllmProcessor(LogitsProcessor):
        """Engine-level trie processor; per-request opt-in via ``extra_args={"sid_domain": ...}``."""

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            extra = getattr(sampling_params, "extra_args", None) or {}
            domain = extra.get(EXTRA_KEY)
            if domain is not None and not isinstance(domain, str):
                raise ValueError(f"extra_args[{EXTRA_KEY!r}] must be a domain name or None, got {domain!r}")

        def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
            trie, meta = load_trie(_trie_path(vllm_config))
            self.state = TrieBatchState(trie, meta["eos_token_id"], meta.get("pad_token_id"), device)

        def is_argmax_invariant(self) -> bool:
            return False  # masking changes the argmax

        def update_state(self, batch_update) -> None:
            self.state.update(batch_update)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            return self.state.apply(logits)

    SidTrieVllmProcessor.__module__ = __name__
    SidTrieVllmProcessor.__qualname__ = _CLASS_NAME
    return SidTrieVllmProcessor


def __getattr__(name: str):
    """``SidTrieVllmProcessor`` is built on first access, so importing this module never imports vLLM."""
    global _cached_class
    if name == _CLASS_NAME:
        if _cached_class is None:
            _cached_class = _build_class()
        return _cached_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
