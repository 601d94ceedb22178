"""Shared helpers for the decoding tests (no tests here): a tiny LM that knows a catalogue's SID tokens."""

from __future__ import annotations

import torch

from decoding.catalogue import Catalogue
from sft.models import load_causal_lm


def sid_model(catalogue: Catalogue, seed: int = 0, scale: float = 1.0, extra_rows: int = 0):
    """Tiny Llama + byte tokenizer with the catalogue's SID tokens added (ordinary tokens) and their embedding
    rows drawn N(0, scale^2) so SID log-probs are well separated (a random tiny model is otherwise ~uniform,
    and ties make rankings arbitrary). ``extra_rows`` pads the embedding matrix beyond ``len(tokenizer)``."""
    model, tok = load_causal_lm("tiny", seed=seed)
    added = tok.add_tokens(catalogue.tokens)
    assert added == len(catalogue.tokens)
    model.resize_token_embeddings(len(tok) + extra_rows, mean_resizing=False)
    ids = tok.convert_tokens_to_ids(catalogue.tokens)
    with torch.no_grad():
        weight = model.get_input_embeddings().weight  # tied with the output head
        generator = torch.Generator().manual_seed(seed)
        weight[ids] = torch.randn(len(ids), weight.shape[1], generator=generator) * scale
    return model.eval(), tok


def small_catalogue(n: int = 40, levels: int = 3, size: int = 4, n_domains: int = 2, seed: int = 0) -> Catalogue:
    return Catalogue.synthetic(n, levels=levels, codebook_size=size, seed=seed, n_domains=n_domains)


def histories_for(catalogue: Catalogue, lengths=(1, 3, 6, 2)) -> list[list[str]]:
    """Histories of different lengths (so prompts are left-padded in a batch)."""
    ids = catalogue.item_ids
    return [[ids[(7 * u + 3 * j) % len(ids)] for j in range(n)] for u, n in enumerate(lengths)]
