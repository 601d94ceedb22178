"""Top-K next-item recommendations from any causal LM with SID tokens: only real items, each at most once.

* :func:`recommend` — the default path: prompts from :func:`data_builders.prompts.next_item_prompt` (the prompt every
  stage uses), one prefill per user, trie beam search (:mod:`decoding.beam`), SIDs mapped back to items.
* :func:`recommend_with_generate` — the same through HF ``generate`` with :class:`SidTrieLogitsProcessor`
  (greedy, beam or sampling); the reference for the prefill-once path and the way to sample.

Scores are ``log P(SID tokens, EOS | prompt)`` under the model (raw log-softmax, not renormalised over the
allowed tokens), in descending order.

>>> recs = recommend(model, tok, catalogue, [["i1", "i2"], ["i3"]], k=5, domains=["Toys", None])  # doctest: +SKIP
>>> recs[0][:2]  # doctest: +SKIP
[('i7', -1.23), ('i4', -2.01)]
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data_builders.prompts import DEFAULT_MAX_HISTORY, next_item_prompt
from decoding.beam import trie_beam_search
from decoding.catalogue import Catalogue
from decoding.generation import build_generation_config, check_generation_defaults
from decoding.processor import SidTrieLogitsProcessor
from decoding.trie import SidTrie

log = logging.getLogger(__name__)

# HF beam search seeds beams 1..K-1 with -1e9 and masked tokens are -inf: anything this low is not an item.
INVALID_SCORE = -1e8


def recommend(
    model, tokenizer, catalogue: Catalogue, histories: list[list[str]], k: int = 10,
    domains: list[str] | None = None, num_beams: int | None = None, batch_size: int = 16,
    max_history: int = DEFAULT_MAX_HISTORY, show_progress: bool = True, search=None,
) -> list[list[tuple[str, float]]]:
    """Per user (history = item ids, oldest first): the top-``k`` unique items and their sequence log-probs.

    domains: one domain per user (None entries, or ``domains=None``, = the whole catalogue). num_beams: beam
    width, default ``k`` (must be >= k; more beams = closer to the exact top-k). search: another beam search with
    :func:`decoding.beam.trie_beam_search`'s arguments plus the batch's user indices (GenCDR's router mixture,
    :mod:`decoding.mixture`). Raises ValueError/KeyError for an
    unknown history item, a SID token missing from the tokenizer, a domain without items, or ``k`` larger than
    the user's (domain's) catalogue.
    """
    num_beams = k if num_beams is None else num_beams
    if num_beams < k:
        raise ValueError(f"num_beams={num_beams} < k={k}: beam search returns at most num_beams items")
    trie, roots, eos, _ = prepare_decoding(model, tokenizer, catalogue, histories, k, domains)
    tables = trie.tables(model.device)
    results: list[list[tuple[str, float]]] = [[] for _ in histories]
    for batch in tqdm(_batches(len(histories), batch_size), disable=not show_progress, desc="recommend"):
        ids, mask = encode_prompts(tokenizer, history_prompts(tokenizer, catalogue, [histories[i] for i in batch],
                                                              max_history), model.device)
        if search is None:
            out = trie_beam_search(model, ids, mask, tables, roots[batch].to(model.device), num_beams, eos)
        else:
            out = search(model, ids, mask, tables, roots[batch].to(model.device), num_beams, eos, batch)
        items = tables.leaf_item[out.leaves.clamp(min=0)].cpu()  # [b, K] catalogue rows
        for j, user in enumerate(batch):
            results[user] = _top_unique(catalogue, items[j], out.scores[j].cpu(), out.leaves[j].cpu() >= 0, k)
    return results


def recommend_with_generate(
    model, tokenizer, catalogue: Catalogue, histories: list[list[str]], k: int = 10,
    domains: list[str] | None = None, mode: str = "beam", num_beams: int | None = None, num_samples: int = 1,
    temperature: float = 1.0, batch_size: int = 16, max_history: int = DEFAULT_MAX_HISTORY,
    show_progress: bool = True,
) -> list[list[tuple[str, float]]]:
    """:func:`recommend` through HF ``generate`` + :class:`SidTrieLogitsProcessor`.

    mode "beam": ``num_beams`` beams (default k), all returned; "greedy": one SID; "sample": ``num_samples``
    samples from the constrained distribution at ``temperature``. Junk beams (HF pads with copies scored
    ~-1e9 when a user has fewer valid continuations than beams) and duplicates are dropped; up to ``k`` returned.
    """
    if mode not in ("beam", "greedy", "sample"):
        raise ValueError(f"mode={mode!r}; choose from 'beam', 'greedy', 'sample'")
    n_seq = {"beam": num_beams or k, "greedy": 1, "sample": num_samples}[mode]
    trie, roots, eos, pad = prepare_decoding(model, tokenizer, catalogue, histories, k if mode == "beam" else 1,
                                             domains)
    config = build_generation_config(sid_length=trie.levels, eos_token_id=eos, pad_token_id=pad, mode=mode,
                                     num_beams=n_seq, num_return_sequences=n_seq, temperature=temperature)
    results: list[list[tuple[str, float]]] = [[] for _ in histories]
    # one processor for every batch: its reused output buffer is allocated once (safe here: beam search copies
    # the processed scores before storing them; greedy/sampling keep only the raw logits, see the config)
    processor = SidTrieLogitsProcessor(trie, roots[:1], eos_token_id=eos, pad_token_id=pad, reuse_output=True)
    for batch in tqdm(_batches(len(histories), batch_size), disable=not show_progress, desc=f"generate ({mode})"):
        ids, mask = encode_prompts(tokenizer, history_prompts(tokenizer, catalogue, [histories[i] for i in batch],
                                                              max_history), model.device)
        processor.reset(roots[batch])
        out = generate_constrained(model, ids, mask, processor, config)
        sids = out.sequences[:, ids.shape[1]:].cpu()  # [b*n, L+1]
        scores = _sequence_scores(out, sids, mode).cpu()  # [b*n]
        for j, user in enumerate(batch):
            rows = slice(j * n_seq, (j + 1) * n_seq)
            items, ok = _items_of(trie, int(roots[user]), sids[rows], eos)
            results[user] = _top_unique(catalogue, items, scores[rows], ok & (scores[rows] > INVALID_SCORE), k)
    return results


def generate_constrained(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         processor: SidTrieLogitsProcessor, config):
    """``model.generate`` with the trie processor and an explicit config (see :mod:`decoding.generation`)."""
    from transformers import LogitsProcessorList

    check_generation_defaults(model)
    with torch.no_grad():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                              logits_processor=LogitsProcessorList([processor]))


def prepare_decoding(model, tokenizer, catalogue: Catalogue, histories: Sequence[Sequence[str]], k: int,
                     domains: Sequence[str | None] | None) -> tuple[SidTrie, torch.Tensor, int, int]:
    """Validate inputs; return (trie, root per user [B], eos id, pad id)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if getattr(model, "training", False):
        log.warning("the model is in training mode (dropout active); call model.eval() for reproducible decoding")
    if domains is not None and len(domains) != len(histories):
        raise ValueError(f"{len(domains)} domains for {len(histories)} histories")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; constrained decoding ends every SID with EOS")
    eos = int(tokenizer.eos_token_id)
    pad = eos if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
    trie = catalogue.trie(tokenizer)
    _check_logits_width(model, trie)
    roots = torch.tensor([trie.root(d) for d in (domains or [None] * len(histories))], dtype=torch.long)
    too_small = [(d, trie.root_sizes[int(r)]) for d, r in zip(domains or [None] * len(histories), roots.tolist())
                 if trie.root_sizes[r] < k]
    if too_small:
        raise ValueError(f"k={k} is larger than the catalogue of domain {too_small[0][0]!r} "
                         f"({too_small[0][1]} items); lower k")
    return trie, roots, eos, pad


def history_prompts(tokenizer, catalogue: Catalogue, histories: Sequence[Sequence[str]],
                    max_history: int = DEFAULT_MAX_HISTORY) -> list[str]:
    """The shared next-item prompt for each history (item ids -> SID strings); KeyError names an unknown item."""
    prompts = []
    for user, history in enumerate(histories):
        try:
            sids = [catalogue.sid_string(item) for item in history]
        except KeyError as e:
            raise KeyError(f"history {user}: {e.args[0]}") from None
        prompts.append(next_item_prompt(sids, tokenizer, max_history))
    return prompts


def encode_prompts(tokenizer, prompts: Sequence[str], device: torch.device | str = "cpu"):
    """Tokenise like TRL (``tokenizer(text)``, default special tokens) and left-pad: (ids [B, P], mask [B, P])."""
    encoded = tokenizer(list(prompts))["input_ids"]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
        mask[i, width - len(e):] = 1
    return ids.to(device), mask.to(device)


def _check_logits_width(model, trie: SidTrie) -> None:
    head = model.get_output_embeddings()
    rows = head.weight.shape[0] if head is not None else model.config.vocab_size
    top = int(max(v[-1] for v in trie.vocab))
    if top >= rows:
        raise ValueError(f"SID token ids go up to {top} but the model has {rows} output rows; resize the model's "
                         "embeddings after adding the SID tokens (tokenization.vocab.extend_vocabulary does)")


def _batches(n: int, size: int) -> list[list[int]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _sequence_scores(out, sids: torch.Tensor, mode: str) -> torch.Tensor:
    """log P(SID, EOS | prompt) per returned sequence [R]: HF's beam scores, or summed raw log-softmax."""
    if mode == "beam":
        return out.sequences_scores.float()
    logp = F.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1).cpu()  # [R, L+1, V]
    return logp.gather(2, sids[:, : logp.shape[1], None]).squeeze(2).sum(1)


def _items_of(trie: SidTrie, root: int, sids: torch.Tensor, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated rows [n, >= L+1] -> (catalogue row [n], valid [n]): a valid row is a full SID followed by EOS."""
    tables = trie.tables("cpu")
    levels = trie.levels
    node = tables.walk(torch.full((len(sids),), root), sids[:, :levels])  # [n]
    ok = (node >= 0) & (sids[:, levels] == eos) if sids.shape[1] > levels else torch.zeros_like(node, dtype=bool)
    return tables.leaf_item[node.clamp(min=0)], ok


def _top_unique(catalogue: Catalogue, items: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor,
                k: int) -> list[tuple[str, float]]:
    """Best score per item among valid rows, sorted descending, first k."""
    best: dict[int, float] = {}
    for row, score, ok in zip(items.tolist(), scores.tolist(), valid.tolist()):
        if ok and score > best.get(row, float("-inf")):
            best[row] = score
    ranked = sorted(best.items(), key=lambda kv: -kv[1])[:k]
    return [(catalogue.item_ids[row], score) for row, score in ranked]


if __name__ == "__main__":  # `python -m decoding.recommend --checkpoint DIR ...`: the CLI in decoding/cli.py
    import sys

    from decoding.cli import main

    sys.exit(main())
