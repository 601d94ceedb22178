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
from decoding.vllm_adapter import (
    EXTRA_KEY,
    PLACEHOLDER,
    TrieBatchState,
    check_sid_params,
    export_trie_for_vllm,
    sid_extra_args,
    trie_domains,
    vllm_version_warning,
)

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


def test_unknown_domain_is_refused_by_validate_params_and_never_raises_in_update_state(state, tmp_path, caplog):
    """#11 item 18: validate_params' check rejects the request (ValueError); if one reaches update_state anyway it
    must not raise (that would stop the engine): it is logged and may only emit EOS; other rows are unaffected."""
    st, seqs = state
    domains = set(st.trie.roots)
    with pytest.raises(ValueError, match="'Books' is not a domain of the SID trie; known: \\['A', 'B'\\]"):
        check_sid_params(sid_extra_args("Books"), domains)
    with pytest.raises(ValueError, match="must be a domain name or None"):
        check_sid_params({EXTRA_KEY: 3}, domains)
    for ok in (sid_extra_args("A"), sid_extra_args(None), None, {"other": 1}):
        check_sid_params(ok, domains)
    check_sid_params(sid_extra_args("Books"), None)  # domains unknown in this process: type check only
    st.update(update(added=[(0, params("Books"), [], []), (1, params("A"), [], [10]),
                            (2, SimpleNamespace(extra_args={EXTRA_KEY: ["A"]}), [], [])]))  # no raise
    assert "'Books' is not a domain" in caplog.text
    out = st.apply(torch.randn(3, V))
    assert allowed(out[0]) == {EOS} and allowed(out[2]) == {EOS} and allowed(out[1]) == {20, 21}
    assert sid_extra_args("A") == {EXTRA_KEY: "A"}
    _, tok = _tiny_tok_catalogue(tmp_path)
    assert trie_domains(str(tmp_path / "trie.npz")) == frozenset({None})


def test_placeholder_tokens_are_not_yet_known_instead_of_ending_the_sid(state, caplog):
    """#11 item 18: async scheduling's -1 placeholders. Walked down the trie a -1 falls off it (= EOS only: the SID
    would end early); instead the row keeps the SID shape (any code of its level) until vLLM patches the id in
    place, then it is exact again."""
    st, seqs = state
    out_a, out_b, out_c = [10, PLACEHOLDER], [PLACEHOLDER, PLACEHOLDER, PLACEHOLDER], [10, 21, 31, PLACEHOLDER]
    st.update(update(added=[(0, params(None), [], out_a), (1, params("B"), [], out_b), (2, params(None), [], out_c)]))
    logits = torch.randn(3, V)
    raw = logits.clone()
    out = st.apply(logits)
    assert allowed(out[0]) == {30, 31, 32}  # any level-2 code, not {EOS}
    assert torch.equal(out[0][[30, 31, 32]], raw[0][[30, 31, 32]])
    assert allowed(out[1]) == {EOS}  # three unknown SID tokens: the SID is complete, so only EOS
    assert allowed(out[2]) == {EOS, PAD}  # the SID is known; the placeholder is its EOS
    assert "placeholders" in caplog.text
    out_a[1] = 21  # vLLM patches the list in place: exact again
    out_b[:] = [11, 20, 32]
    out = st.apply(torch.randn(3, V))
    assert allowed(out[0]) == {31} and allowed(out[1]) == {EOS}


def test_vllm_version_range_and_model_runner_v2_warning():
    assert vllm_version_warning("0.11.0", {}) is None and vllm_version_warning("0.31.4rc1", {}) is None
    assert "older" in vllm_version_warning("0.10.2", {})
    assert "VLLM_USE_V2_MODEL_RUNNER=0" in vllm_version_warning("0.32.0", {})
    assert "newer" in vllm_version_warning("0.33.1", {"VLLM_USE_V2_MODEL_RUNNER": "0"})
    import tomllib
    from pathlib import Path

    extra = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert extra["optional-dependencies"]["vllm"] == ["vllm>=0.11,<0.32"]  # the same range as SUPPORTED_VLLM


def test_state_machine_with_vllms_own_batch_update(state, tmp_path, monkeypatch):
    """The same transitions through vLLM's BatchUpdate / MoveDirectionality / SamplingParams (skipped without
    vLLM, e.g. on this CPU machine), and the engine class's validate_params."""
    interface = pytest.importorskip("vllm.v1.sample.logits_processor")
    from vllm import SamplingParams

    st, _ = state
    a, b, c = [10], [11], [12, 22]

    def batch(removed=(), added=(), moved=()):
        return interface.BatchUpdate(batch_size=4, removed=list(removed), added=list(added), moved=list(moved))

    sp = lambda d: SamplingParams(extra_args=sid_extra_args(d))  # noqa: E731
    st.update(batch(added=[(0, sp("A"), [5], a), (1, sp("B"), [5], b), (2, sp(None), None, c)]))
    st.update(batch(removed=[1], moved=[(2, 1, interface.MoveDirectionality.UNIDIRECTIONAL)]))
    assert set(st.requests) == {0, 1} and st.requests[1][1] is c
    st.update(batch(moved=[(0, 1, interface.MoveDirectionality.SWAP)]))
    assert st.requests[0][1] is c and st.requests[1][1] is a
    out = st.apply(torch.zeros(2, V))
    assert allowed(out[0]) == {30} and allowed(out[1]) == {20, 21}

    catalogue, tok = _tiny_tok_catalogue(tmp_path)
    monkeypatch.setenv("GENREC_SID_TRIE", str(tmp_path / "trie.npz"))
    import decoding.vllm_adapter as adapter

    cls = adapter.SidTrieVllmProcessor
    assert issubclass(cls, interface.LogitsProcessor)
    cls.validate_params(SamplingParams(extra_args=sid_extra_args(None)))
    with pytest.raises(ValueError, match="not a domain"):
        cls.validate_params(SamplingParams(extra_args=sid_extra_args("Books")))


def _tiny_tok_catalogue(tmp_path):
    from test_decoding_fixtures import sid_model

    catalogue = Catalogue.from_sids({"i": "<a_0><b_1>", "j": "<a_1><b_1>"})
    _, tok = sid_model(catalogue)
    export_trie_for_vllm(catalogue, tok, tmp_path / "trie.npz")
    return catalogue, tok


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
