"""decoding.trie: the compact SID trie against a brute-force scan (decoding.reference.allowed_next_tokens)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from decoding.trie import build_trie, load_trie, save_trie

EOS = 0


def random_catalogue(rng, n: int, levels: int, size: int, offset: int = 100) -> np.ndarray:
    """Distinct random SIDs as token ids [n, levels]; level l uses ids offset + l*size + code."""
    codes = np.unique(rng.integers(0, size, (n, levels)), axis=0)
    return codes + offset + np.arange(levels) * size


def reference_allowed(seqs: np.ndarray, prefix) -> set[int]:
    t = len(prefix)
    match = (seqs[:, :t] == np.asarray(prefix, dtype=np.int64)).all(1) if t else np.ones(len(seqs), bool)
    if not match.any() or t > seqs.shape[1]:
        return set()
    return set() if t == seqs.shape[1] else set(seqs[match, t].tolist())


def test_doc_example_and_cross_prefix_combination_is_not_allowed():
    # (a1, b1) and (a2, b2) exist; (a1, b2) must not — the classic fake-trie bug keyed on (position, prev token)
    seqs = np.array([[10, 20], [11, 21]])
    trie = build_trie(seqs, {None: np.arange(2)})
    root = trie.root(None)
    assert trie.allowed_tokens(root, []) == [10, 11]
    assert trie.allowed_tokens(root, [10]) == [20]
    assert trie.allowed_tokens(root, [11]) == [21]
    assert trie.item_of(root, [10, 21]) == -1 and trie.walk(root, [10, 21]) == -1
    assert trie.item_of(root, [11, 21]) == 1
    assert trie.allowed_tokens(root, [10, 20]) == []  # complete: the caller allows EOS only


@pytest.mark.parametrize("seed", range(12))
def test_random_tries_match_brute_force_on_every_prefix(seed):
    rng = np.random.default_rng(seed)
    levels, size = int(rng.integers(1, 5)), int(rng.integers(2, 6))
    seqs = random_catalogue(rng, int(rng.integers(1, 60)), levels, size)
    domain = rng.integers(0, 3, len(seqs))
    groups = {None: np.arange(len(seqs)), **{f"d{d}": np.flatnonzero(domain == d) for d in set(domain.tolist())}}
    trie = build_trie(seqs, groups)
    vocab = sorted(set(seqs.ravel().tolist())) + [1]  # + a token that is never a SID token
    for name, rows in groups.items():
        root = trie.root(name)
        for t in range(levels + 1):
            for prefix in itertools.islice(itertools.product(vocab, repeat=t), 400):
                assert set(trie.allowed_tokens(root, prefix)) == reference_allowed(seqs[rows], prefix), (name, prefix)
        for r in rows:
            assert trie.item_of(root, seqs[r].tolist()) == r


def test_torch_tables_match_numpy_trie():
    rng = np.random.default_rng(7)
    seqs = random_catalogue(rng, 300, 3, 8)
    trie = build_trie(seqs, {None: np.arange(len(seqs)), "half": np.arange(0, len(seqs), 2)})
    tables = trie.tables("cpu")
    prefixes = np.concatenate([seqs[:, :2], rng.integers(100, 124, (50, 2))])  # real and random prefixes
    roots = torch.tensor(rng.choice([trie.root(None), trie.root("half")], len(prefixes)))
    node = tables.walk(roots, torch.from_numpy(prefixes))
    allowed = tables.allowed_codes(2, node)
    for i, prefix in enumerate(prefixes):
        expect = trie.allowed_tokens(int(roots[i]), prefix.tolist())
        assert tables.vocab[2][allowed[i]].tolist() == expect
        assert (int(node[i]) >= 0) == (trie.walk(int(roots[i]), prefix.tolist()) >= 0)


def test_identical_groups_share_a_root_and_errors_are_clear():
    seqs = np.array([[1, 2], [1, 3]])
    trie = build_trie(seqs, {None: np.arange(2), "all": np.array([1, 0])})
    assert trie.root(None) == trie.root("all") and len(trie.root_sizes) == 1
    with pytest.raises(KeyError, match="no trie for domain 'Toys'"):
        trie.root("Toys")
    with pytest.raises(ValueError, match="same SID"):
        build_trie(np.array([[1, 2], [1, 2]]), {None: np.arange(2)})
    with pytest.raises(ValueError, match="no items"):
        build_trie(seqs, {"empty": np.array([], dtype=int)})
    with pytest.raises(ValueError, match="non-empty"):
        build_trie(np.zeros((0, 3)), {None: np.arange(0)})


def test_same_sid_in_two_domains_is_fine():
    seqs = np.array([[1, 2], [1, 2]])  # e.g. separately tokenised domains; unique within each
    trie = build_trie(seqs, {"A": np.array([0]), "B": np.array([1])})
    assert trie.item_of(trie.root("A"), [1, 2]) == 0 and trie.item_of(trie.root("B"), [1, 2]) == 1


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    seqs = random_catalogue(rng, 100, 3, 6)
    trie = build_trie(seqs, {None: np.arange(len(seqs)), "x": np.arange(len(seqs) // 2)})
    save_trie(trie, tmp_path / "t.npz", eos_token_id=5)
    loaded, meta = load_trie(tmp_path / "t.npz")
    assert meta == {"eos_token_id": 5} and loaded.roots == trie.roots
    for prefix in seqs[:20, :2].tolist():
        assert loaded.allowed_tokens(loaded.root("x"), prefix) == trie.allowed_tokens(trie.root("x"), prefix)


def test_trie_is_compact_for_100k_items():
    rng = np.random.default_rng(0)
    seqs = np.unique(rng.integers(0, 256, (100_000, 4)), axis=0) + np.arange(4) * 256
    trie = build_trie(seqs, {None: np.arange(len(seqs))})
    # keys 8 B/node + leaf ids 8 B/item + bit tables ~32 B per depth-3 node: well under 8 MB for 100k items
    assert trie.nbytes < 8 * 2**20, trie.nbytes



def test_small_ops_restores_the_thread_count_even_on_error():
    from decoding.trie import small_ops

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with small_ops("cpu"):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
