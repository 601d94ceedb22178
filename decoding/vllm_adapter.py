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

Robustness inside the engine (a raise in ``update_state``/``apply`` would take the engine down):

* an unknown domain is rejected up front by ``validate_params`` (``ValueError`` for that request only; it reads the
  trie's domain names from ``$GENREC_SID_TRIE``). Should one reach ``update_state`` anyway (the variable unset in
  the front-end process), the request is logged and may only emit EOS: an empty answer, never another domain's item.
* ``-1`` placeholders (async scheduling appends one per step for a sampled token still on the GPU; vLLM patches them
  in place for processors that need token values, which ``needs_output_token_ids`` declares) mean "not yet known":
  such a row is not walked down the trie (a -1 would fall off it and end the SID early); it keeps the SID *shape*
  (any code of its level, then EOS) for that step, with a warning, and is exact again once the id is patched.

Scope: vLLM ``>=0.11,<0.32`` (pinned in ``pyproject.toml``), the V1 model runner's ``LogitsProcessor`` /
``BatchUpdate`` interface (``AddedRequest = (index, params, prompt_tok_ids, output_tok_ids)``), checked against
vLLM's source; not run on a real engine here (no GPU). vLLM >= 0.32 defaults to Model Runner V2, whose logits
processors have another interface: set ``VLLM_USE_V2_MODEL_RUNNER=0`` there (building the class warns otherwise).
vLLM rejects custom logits processors under speculative decoding; ``LLM.beam_search`` ignores logits processors,
so beam evaluation stays on the HF path (:mod:`decoding.recommend`). Requests without the ``sid_domain`` extra arg
are left unconstrained.
"""

from __future__ import annotations

import functools
import re
import logging
import os
from typing import Any

import torch

from decoding.processor import constrain_rows
from decoding.trie import SidTrie, load_trie, save_trie

log = logging.getLogger(__name__)

ENV_TRIE = "GENREC_SID_TRIE"
EXTRA_KEY = "sid_domain"  # SamplingParams.extra_args key; value = domain name, or None for the whole catalogue
_CLASS_NAME = "SidTrieVllmProcessor"
PLACEHOLDER = -1  # an output token id async scheduling has not copied back to the host yet
SUPPORTED_VLLM = ((0, 11), (0, 32))  # [low, high): V1 model runner interface; = pyproject.toml's vllm pin
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


def check_sid_params(extra_args: dict | None, domains: set | None) -> None:
    """What ``validate_params`` checks (ValueError rejects the request, not the engine): ``extra_args[sid_domain]``
    is a str or None and, when the trie's ``domains`` are known, one of them."""
    if not extra_args or EXTRA_KEY not in extra_args:
        return
    domain = extra_args[EXTRA_KEY]
    if domain is not None and not isinstance(domain, str):
        raise ValueError(f"extra_args[{EXTRA_KEY!r}] must be a domain name or None, got {domain!r}")
    if domains is not None and domain not in domains:
        known = sorted(str(d) for d in domains if d is not None)
        raise ValueError(f"extra_args[{EXTRA_KEY!r}] = {domain!r} is not a domain of the SID trie; known: {known} "
                         "(None = all items)")


@functools.lru_cache(maxsize=4)
def trie_domains(path: str) -> frozenset:
    """Root names of the trie file at ``path`` (read once per path)."""
    return frozenset(load_trie(path)[0].roots)


def vllm_version_warning(version: str, env: dict) -> str | None:
    """Why this vLLM may not run the processor as tested (None if it should): outside ``SUPPORTED_VLLM``, or a
    version defaulting to Model Runner V2 without ``VLLM_USE_V2_MODEL_RUNNER=0``."""
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    low, high = SUPPORTED_VLLM
    if parts < low:
        return f"vLLM {version} is older than the supported range >={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    if parts >= high and env.get("VLLM_USE_V2_MODEL_RUNNER") != "0":
        return (f"vLLM {version} defaults to Model Runner V2, whose logits processors have another interface; set "
                f"VLLM_USE_V2_MODEL_RUNNER=0 (supported range >={low[0]}.{low[1]},<{high[0]}.{high[1]})")
    if parts >= high:
        return f"vLLM {version} is newer than the supported range <{high[0]}.{high[1]}"
    return None


class TrieBatchState:
    """Which batch rows are constrained, under which root, and their live output-token lists.

    ``output_ids`` are vLLM's own running lists (it appends to them), so ``apply`` always sees the latest tokens.
    Nothing here raises on request data: an unknown domain gets root -1 (EOS only), a ``-1`` placeholder token
    is "not yet known" (see the module docstring).
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
            domain = extra_args[EXTRA_KEY]
            root = self.trie.roots.get(domain, -1) if isinstance(domain, (str, type(None))) else -1
            if root < 0:  # validate_params rejects these; raising here would stop the engine for every request
                log.error("%s: extra_args[%r] = %r is not a domain of the SID trie (known: %s); the request may "
                          "only emit EOS", _CLASS_NAME, EXTRA_KEY, domain,
                          sorted(str(d) for d in self.trie.roots if d is not None))
            self.requests[index] = (root, output_ids)

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
        depth = [len(o) for o in outputs]
        unknown = [PLACEHOLDER in p[:d] for p, d in zip(prefix, depth)]
        rows = torch.tensor(index, dtype=torch.long, device=logits.device)
        tables = self.trie.tables(logits.device)
        masked = constrain_rows(
            logits[rows], tables, torch.tensor(roots, device=logits.device),
            torch.tensor(prefix, dtype=torch.long, device=logits.device),
            torch.tensor(depth, device=logits.device), self.eos, self.pad)
        for r in (r for r, u in enumerate(unknown) if u):  # rare: placeholders vLLM has not patched
            masked[r] = self._shape_only(logits[index[r]], depth[r])
        logits[rows] = masked
        return logits

    def _shape_only(self, scores: torch.Tensor, depth: int) -> torch.Tensor:
        """A row whose prefix holds a placeholder: any code of level ``depth`` (EOS after L tokens; pad after EOS)
        — not walked down the trie, whose answer would be "off the trie: end now"."""
        if not getattr(self, "_warned", False):
            self._warned = True
            log.warning("%s: an output token list holds %d placeholders (async scheduling); those rows are "
                        "constrained to the SID shape only until vLLM patches the ids (run with "
                        "--no-async-scheduling if this persists)", _CLASS_NAME, PLACEHOLDER)
        out = torch.full_like(scores, float("-inf"))  # [V]
        tables = self.trie.tables(scores.device)
        keep = tables.vocab[depth] if depth < self.trie.levels else torch.tensor(
            [self.eos] if depth == self.trie.levels or self.pad is None else [self.eos, self.pad],
            device=scores.device)
        out[keep] = scores[keep]
        return out


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
        import vllm
        from vllm.v1.sample.logits_processor import LogitsProcessor
    except ImportError as e:
        raise ImportError(f"{_CLASS_NAME} needs vLLM (GPU machines: `pip install genrec[vllm]` in its own "
                          f"environment); the HF path decoding.recommend works without it ({e})") from None
    warning = vllm_version_warning(getattr(vllm, "__version__", "0"), dict(os.environ))
    if warning:
        log.warning("%s: %s", _CLASS_NAME, warning)

    class SidTrieVllmProcessor(LogitsProcessor):
        """Engine-level trie processor; per-request opt-in via ``extra_args={"sid_domain": ...}``."""

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            """Runs in the front-end process: an unknown domain is that request's ValueError."""
            path = os.environ.get(ENV_TRIE)
            check_sid_params(getattr(sampling_params, "extra_args", None), trie_domains(path) if path else None)

        @classmethod
        def needs_output_token_ids(cls) -> bool:
            return True  # reads token *values*: vLLM versions that ask patch async placeholders before apply

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
