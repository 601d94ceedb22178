"""Extend any HF tokenizer + causal LM with the SID tokens of an artifact — shared by SFT, RL and evaluation.

* Tokens are added as *ordinary* added tokens, not special ones: TRL decodes completions with
  ``skip_special_tokens=True``, which would erase special SID tokens. Each must tokenise atomically
  (``"<a_1><b_2><c_3>"`` -> exactly 3 ids); this is checked, not assumed.
* The embedding matrix is resized to ``max(current rows, needed)``: never shrink a matrix padded beyond
  ``len(tokenizer)`` (Qwen: 151,665 tokens, 151,936 rows); new tokens may land on padded rows.
* Every SID row is initialised explicitly: ``semantic`` (default) = mean input embedding of the title tokens of the
  items carrying that code at that level; ``mean`` = mean of the original vocabulary's rows. Codes no item carries
  fall back to the vocabulary mean. Untied output rows get the same treatment from the output matrix; tied
  embeddings stay tied.
* Reloading a fine-tuned checkpoint: :func:`check_sid_vocabulary` verifies that its tokenizer holds exactly the
  artifact's tokens (:meth:`SidArtifact.all_tokens`, the one ordered list) in order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from tokenization.artifact import SidArtifact
from tokenization.sid_format import sid_string, split_sid_string

log = logging.getLogger(__name__)

INITS = ("semantic", "mean")


def sid_token_ids(tokenizer, artifact: SidArtifact) -> list[int]:
    """Ids of the artifact's tokens, in :meth:`SidArtifact.all_tokens` order (unknown tokens raise)."""
    vocab = tokenizer.get_vocab()
    tokens = artifact.all_tokens()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ValueError(f"{len(missing)} of {len(tokens)} SID tokens are not in the tokenizer, e.g. {missing[:3]}; "
                         "extend it with tokenization.vocab.extend_vocabulary")
    return [vocab[t] for t in tokens]


def check_atomic(tokenizer, tokens: Sequence[str], ids: Sequence[int], examples: Sequence[str] = ()) -> None:
    """ValueError unless every token encodes to its one id, and each example SID string to one id per level and
    decodes back unchanged with ``skip_special_tokens=True`` (as TRL decodes completions)."""
    encoded = tokenizer(list(tokens), add_special_tokens=False)["input_ids"]
    for token, token_id, enc in zip(tokens, ids, encoded):
        if enc != [token_id]:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} splits SID token {token!r} into ids {enc} "
                             f"(expected [{token_id}]); SID tokens must be atomic")
    for text in examples:
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(enc, skip_special_tokens=True)
        if len(enc) != len(split_sid_string(text)) or decoded != text:
            raise ValueError(f"SID string {text!r} encodes to {enc} and decodes to {decoded!r}; expected one id "
                             "per level and an exact round trip")


def add_sid_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Add ``tokens`` as ordinary (non-special) tokens; ValueError if any is already present. Returns their ids."""
    vocab = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocab]
    if present:
        raise ValueError(f"{len(present)} SID tokens are already in the tokenizer's vocabulary, e.g. {present[:3]}; "
                         "a checkpoint that already has them is loaded with check_sid_vocabulary, not extended")
    added = tokenizer.add_tokens(list(tokens), special_tokens=False)
    if added != len(tokens):
        raise ValueError(f"tokenizer added {added} of {len(tokens)} SID tokens")
    return tokenizer.convert_tokens_to_ids(list(tokens))


def resize_embeddings(model, needed: int) -> tuple[int, int]:
    """Grow the embedding matrix to ``needed`` rows if it is smaller; never shrink. Returns (rows before, after)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if needed > rows:
        model.resize_token_embeddings(needed, mean_resizing=False)  # rows are initialised explicitly below
    return rows, model.get_input_embeddings().weight.shape[0]


def item_title_vectors(weight: torch.Tensor, tokenizer, titles: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean embedding row of each title's tokens: weight [V, H] -> (vectors float32 [N, H], has_title bool [N])."""
    vectors = torch.zeros(len(titles), weight.shape[1], dtype=torch.float32)
    has = torch.zeros(len(titles), dtype=torch.bool)
    encoded = tokenizer([t or "" for t in titles], add_special_tokens=False)["input_ids"]
    w = weight.detach().float()
    for i, ids in enumerate(encoded):
        ids = [t for t in ids if t < w.shape[0]]  # a title quoting a SID token: use its ordinary tokens only
        if ids:
            vectors[i] = w[torch.tensor(ids)].mean(0)
            has[i] = True
    return vectors, has


def code_means(
    vectors: torch.Tensor, has: torch.Tensor, codes: np.ndarray, codebook_sizes: Sequence[int],
    fallback: torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """Rows in all_tokens order: for level l and code c, the mean of ``vectors`` [N, H] over items (with a title)
    whose level-l code is c; ``fallback`` [H] when there is none. Returns (rows [Σ sizes, H], fallback count)."""
    rows, n_fallback = [], 0
    for level, size in enumerate(codebook_sizes):
        idx = torch.from_numpy(codes[:, level].astype(np.int64))[has]
        sums = torch.zeros(size, vectors.shape[1]).index_add_(0, idx, vectors[has])
        counts = torch.bincount(idx, minlength=size).float()
        means = sums / counts.clamp(min=1)[:, None]
        means[counts == 0] = fallback
        n_fallback += int((counts == 0).sum())
        rows.append(means)
    return torch.cat(rows), n_fallback


def _titles(artifact: SidArtifact, dataset) -> list[str]:
    if isinstance(dataset, Mapping):
        return [dataset.get(item_id, "") or "" for item_id in artifact.item_ids]
    if dataset is None:
        path = (artifact.meta.get("inputs") or {}).get("dataset") or artifact.meta.get("dataset")
        if not path:
            raise ValueError("semantic init needs item titles: pass dataset= (a RecDataset or {item_id: title})")
        from data_builders.dataset import load_rec_dataset

        dataset = load_rec_dataset(path)
    from tokenization.inputs import item_titles

    return item_titles(dataset, artifact.item_ids)


@torch.no_grad()
def _init_rows(weight: torch.Tensor, ids: list[int], n_vocab: int, init: str, tokenizer, artifact, titles) -> int:
    """Write the SID rows of ``weight`` [rows, H]; returns how many codes fell back to the vocabulary mean."""
    fallback = weight[:n_vocab].float().mean(0)  # original vocabulary only, no padded rows
    if init == "mean":
        new, n_fallback = fallback.expand(len(ids), -1), 0
    else:
        vectors, has = item_title_vectors(weight[:n_vocab], tokenizer, titles)
        new, n_fallback = code_means(vectors, has, artifact.codes, artifact.codebook_sizes, fallback)
    weight[torch.tensor(ids)] = new.to(weight.dtype)
    return n_fallback


def extend_vocabulary(model, tokenizer, artifact: SidArtifact, init: str | None = None, dataset=None) -> dict:
    """Add the artifact's SID tokens to ``tokenizer`` and ``model`` and initialise their embedding rows.

    ``init``: "semantic" | "mean" (None = the artifact's ``meta["vocab_init"]``, default "semantic");
    ``dataset``: a RecDataset or ``{item_id: title}`` for semantic init (None = the artifact's dataset path).
    Returns a report (tokens, id range, rows before/after, init, tied, fallback codes) to store with a checkpoint.

    >>> report = extend_vocabulary(model, tok, artifact, init="mean")  # doctest: +SKIP
    >>> len(tok("<a_1><b_2><c_3>", add_special_tokens=False)["input_ids"])  # doctest: +SKIP
    3
    """
    init = init or artifact.meta.get("vocab_init", "semantic")
    if init not in INITS:
        raise ValueError(f"init={init!r}; choose from {INITS}")
    titles = _titles(artifact, dataset) if init == "semantic" else None
    n_vocab = len(tokenizer)
    tokens = artifact.all_tokens()
    ids = add_sid_tokens(tokenizer, tokens)
    check_atomic(tokenizer, tokens, ids, examples=[sid_string(row) for row in artifact.codes[:3].tolist()])
    tied = _is_tied(model)
    rows_before, rows_after = resize_embeddings(model, max(ids) + 1)
    n_fallback = _init_rows(model.get_input_embeddings().weight, ids, n_vocab, init, tokenizer, artifact, titles)
    output = model.get_output_embeddings()
    if output is not None and not _is_tied(model):
        _init_rows(output.weight, ids, n_vocab, init, tokenizer, artifact, titles)
    if tied and not _is_tied(model):
        raise RuntimeError("input and output embeddings were tied before resizing and are not any more")
    report = {
        "init": init, "n_tokens": len(tokens), "first_token_id": int(min(ids)), "last_token_id": int(max(ids)),
        "vocab_before": n_vocab, "vocab_after": len(tokenizer), "rows_before": rows_before, "rows_after": rows_after,
        "tied": tied, "codes_without_items": n_fallback, "levels": artifact.levels,
        "codebook_sizes": artifact.codebook_sizes,
    }
    log.info("added %d SID tokens (ids %d..%d), %s init, embedding rows %d -> %d", len(tokens), min(ids), max(ids),
             init, rows_before, rows_after)
    return report


def check_sid_vocabulary(tokenizer, artifact: SidArtifact, model=None) -> list[int]:
    """For a checkpoint extended earlier: the artifact's tokens are present, atomic, in the same order with
    consecutive ids, and (with ``model``) inside the embedding matrix. Returns their ids."""
    ids = sid_token_ids(tokenizer, artifact)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ValueError("the tokenizer's SID tokens are not consecutive in artifact order: was it extended from a "
                         "different SID artifact?")
    check_atomic(tokenizer, artifact.all_tokens(), ids, examples=[sid_string(r) for r in artifact.codes[:3].tolist()])
    if model is not None and model.get_input_embeddings().weight.shape[0] <= ids[-1]:
        raise ValueError(f"the model has {model.get_input_embeddings().weight.shape[0]} embedding rows but SID "
                         f"token ids go up to {ids[-1]}; resize the base model before loading the checkpoint")
    return ids


def _is_tied(model) -> bool:
    output = model.get_output_embeddings()
    return output is not None and output.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
