"""decoding.vllm_adapter on CPU: the persistent-batch state machine, without vLLM installed."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from enum import Enum
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from decoding.catalogue import Catalogue
from decoding.reference import allowed_next_tokens
from decoding.trie import build_trie
from decoding.vllm_adapter import EXTRA_KEY, TrieBatchState, export_trie_for_vllm, sid_extra_args

EOS, PAD, V = 1, 0, 64


class Move(Enum):  # mirrors vllm's MoveDirectionality (matched by name, so vllm is not needed)
    UNIDIRECTIONAL = 1
    SWAP = 2


def update(removed=(), added=(), moved=(), batch_size=8):
    return SimpleNamespace(batch_size=batch_size, removed=list(removed), added=list(added), moved=list(moved))


def params(domain="*"):
    return SimpleNamespace(extra_args=None if domain == "*" else sid_extra_args(domain))


@pytest.fixture
def state():
    seqs = np.array([[10, 20, 30], [10, 21, 31], [11, 20, 32], [12, 22, 30]])
    trie = build_trie(seqs, {None: np.arange(4), "A": np.array([0, 1]), "B": np.array([2, 3])})
    return TrieBatchState(trie, EOS, PAD), seqs


def allowed(row: torch.Tensor) -> set[int]:
    return set(torch.isfinite(row).nonzero().squeeze(1).tolist())


def test_rows_at_different_steps_and_domains_are_masked_like_the_reference(state):
    st, seqs = state
    outs = {0: [], 1: [10], 2: [11, 20], 3: [10, 21, 31], 4: [12, 22, 30, EOS]}
    domains = {0: "A", 1: None, 2: "B", 3: "A", 4: "B"}
    st.update(update(added=[(i, params(domains[i]), [5, 6], outs[i]) for i in outs]))
    st.update(update(added=[(5, params("*"), [5], [])]))  # a request that did not ask for the trie
    logits = torch.randn(6, V)
    raw = logits.clone()
    st.update(None)
    out = st.apply(logits)
    rows = {None: np.arange(4), "A": np.array([0, 1]), "B": np.array([2, 3])}
    for i, toks in outs.items():
        expect = allowed_next_tokens(seqs[rows[domains[i]]], toks, EOS) if len(toks) <= 3 else {EOS, PAD}
        assert allowed(out[i]) == expect, (i, toks)
        assert torch.equal(out[i][sorted(expect)], raw[i][sorted(expect)])
    assert torch.equal(out[5], raw[5])  # unconstrained request untouched
    outs[0].append(10)  # vLLM appends to its own list; the state sees it on the next step
    assert allowed(st.apply(torch.randn(6, V))[0]) == {20, 21}


def test_remove_add_move_and_swap_follow_vllm_semantics(state):
    st, _ = state
    a, b, c = [10], [11], [12, 22]
    st.update(update(added=[(0, params("A"), [], a), (1, params("B"), [], b), (2, params(None), [], c)]))
    st.update(update(removed=[1], moved=[(2, 1, Move.UNIDIRECTIONAL)]))  # 2 -> 1, slot 2 becomes empty
    assert set(st.requests) == {0, 1} and st.requests[1][1] is c
    st.update(update(moved=[(0, 1, Move.SWAP)]))
    assert st.requests[0][1] is c and st.requests[1][1] is a
    st.update(update(added=[(1, params("*"), [], [])]))  # a new unconstrained request replaces slot 1
    assert set(st.requests) == {0}
    out = st.apply(torch.zeros(3, V))
    assert allowed(out[0]) == {30} and allowed(out[1]) == set(range(V))


def test_unknown_domain_in_extra_args_raises(state):
    st, _ = state
    with pytest.raises(KeyError, match="no trie for domain 'Books'"):
        st.update(update(added=[(0, params("Books"), [], [])]))
    assert sid_extra_args("A") == {EXTRA_KEY: "A"}


def test_export_and_engine_class_without_vllm(tmp_path):
    from test_decoding_fixtures import sid_model

    catalogue = Catalogue.from_sids({"i": "<a_0><b_1>", "j": "<a_1><b_1>"})
    _, tok = sid_model(catalogue)
    trie = export_trie_for_vllm(catalogue, tok, tmp_path / "trie.npz")
    from decoding.trie import load_trie

    loaded, meta = load_trie(tmp_path / "trie.npz")
    assert meta["eos_token_id"] == tok.eos_token_id and loaded.roots == trie.roots
    if importlib.util.find_spec("vllm") is None:
        import decoding.vllm_adapter as adapter

        with pytest.raises(ImportError, match="needs vLLM"):
            adapter.SidTrieVllmProcessor  # noqa: B018


def test_import_boundaries():
    """decoding.trie is pure (numpy/torch); importing the vLLM adapter never imports vllm."""
    code = ("import sys, decoding.trie; assert 'transformers' not in sys.modules; "
            "import decoding.vllm_adapter; assert 'vllm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
