"""A compact prefix tree over SID token-id sequences, with one root per domain plus a global root.

Built from the *token ids* of the added SID tokens (never by re-tokenising text), so any tokenizer and prompt
template work. Pure numpy/torch: no trainer or transformers imports.

Layout (``L`` levels, ``R`` roots; nodes are numbered per depth, depth 0 = the roots)::

    vocab[l]        int64 [W_l]              sorted token ids that occur at level l ("codes" = positions in it)
    prefix_keys[d]  int64 [n_d]              sorted key of every depth-d node's full prefix, mixed radix
                                             ``((root * W_0 + c_0) * W_1 + c_1) ...``; a node's id is its position,
                                             so finding the node of any prefix is one ``searchsorted``
    bits[l]         uint8 [n_l, ceil(W_l/8)] allowed codes of every depth-l node, bit-packed (little bit order)
    leaf_item       int64 [n_L]              catalogue row of every leaf

A SID is complete only at a leaf (depth L); all items have the same number of levels (the artifact stores
``codes [N, levels]``, de-duplication level included). For 1M items x 4 levels x 256 codes this is ~50 MB.
Why bit tables rather than a dense ``[node, max_fanout]`` table: the width is bounded by the level's vocabulary
(256 bits = 32 bytes), never by one adversarial high-fanout node, and the per-step cost is one gather.

>>> import numpy as np
>>> trie = build_trie(np.array([[10, 20], [10, 21], [11, 20]]), {"all": np.arange(3)})
>>> trie.allowed_tokens(trie.roots["all"], [])
[10, 11]
>>> trie.allowed_tokens(trie.roots["all"], [11])
[20]
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

# byte value -> its 8 bits (bit j of byte i = code 8 * i + j): unpacking a bit table is one gather
_BIT_LUT = torch.from_numpy(np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little"))


@contextmanager
def small_ops(device: torch.device | str):
    """Run tiny CPU tensor ops single-threaded inside this block (no effect on GPU).

    Why: torch parallelises even 320-element ``searchsorted``/index ops over its intra-op threads; on a busy
    machine each parallel region can wait a whole scheduler slice (measured: 12 ms per op with 2 threads vs
    0.03 ms with 1). The trie ops touch a few thousand elements, so one thread is always faster. The thread count
    is process-global, so this assumes no other thread runs torch ops meanwhile (true inside a decode step).
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class SidTrie:
    """See the module docstring for the arrays. ``roots`` maps a root name (a domain, or ``None`` = all items)
    to its depth-0 node id; two names may share a root (a domain holding every item reuses the global one)."""

    vocab: list[np.ndarray]
    prefix_keys: list[np.ndarray]
    bits: list[np.ndarray]
    leaf_item: np.ndarray
    roots: dict[str | None, int]
    root_sizes: list[int]
    _device_tables: dict[str, "TrieTables"] = field(default_factory=dict, repr=False)

    @property
    def levels(self) -> int:
        return len(self.vocab)

    @property
    def nbytes(self) -> int:
        arrays = [*self.vocab, *self.prefix_keys, *self.bits, self.leaf_item]
        return int(sum(a.nbytes for a in arrays))

    def root(self, name: str | None) -> int:
        """Root node id of a domain (``None`` = all items); KeyError naming the known domains otherwise."""
        if name not in self.roots:
            known = sorted(str(k) for k in self.roots if k is not None)
            raise KeyError(f"no trie for domain {name!r}; known domains: {known} (None = all items)")
        return self.roots[name]

    def child(self, level: int, node: np.ndarray, token: np.ndarray) -> np.ndarray:
        """Depth-(level+1) node reached from depth-``level`` ``node`` [R] by ``token`` [R]; -1 where invalid."""
        node, token = np.asarray(node, np.int64), np.asarray(token, np.int64)
        vocab, keys = self.vocab[level], self.prefix_keys[level + 1]
        code = np.minimum(np.searchsorted(vocab, token), len(vocab) - 1)
        key = self.prefix_keys[level][np.maximum(node, 0)] * len(vocab) + code
        pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        ok = (node >= 0) & (vocab[code] == token) & (keys[pos] == key)
        return np.where(ok, pos, -1)

    def walk(self, root: int, prefix: Sequence[int]) -> int:
        """Node reached from ``root`` by ``prefix`` (token ids), -1 if the prefix is not in the trie."""
        node = np.array([root])
        for level, token in enumerate(prefix[: self.levels]):
            node = self.child(level, node, np.array([token]))
        return -1 if len(prefix) > self.levels else int(node[0])

    def allowed_tokens(self, root: int, prefix: Sequence[int]) -> list[int]:
        """Sorted token ids allowed after ``prefix``; ``[]`` for a complete SID (the caller allows EOS)."""
        depth = len(prefix)
        node = self.walk(root, prefix)
        if node < 0 or depth >= self.levels:
            return []
        codes = np.flatnonzero(np.unpackbits(self.bits[depth][node], bitorder="little")[: len(self.vocab[depth])])
        return self.vocab[depth][codes].tolist()

    def item_of(self, root: int, tokens: Sequence[int]) -> int:
        """Catalogue row of the complete SID ``tokens`` under ``root``; -1 if it is not an item."""
        if len(tokens) != self.levels:
            return -1
        leaf = self.walk(root, tokens)
        return -1 if leaf < 0 else int(self.leaf_item[leaf])

    def tables(self, device: torch.device | str) -> "TrieTables":
        """The torch tables on ``device`` (built once per device and cached)."""
        key = str(torch.device(device))
        if key not in self._device_tables:
            self._device_tables[key] = TrieTables.from_trie(self, torch.device(device))
        return self._device_tables[key]


def build_trie(token_ids: np.ndarray, groups: Mapping[str | None, np.ndarray]) -> SidTrie:
    """Build the forest: one root per group of catalogue rows (e.g. ``{None: all rows, "Toys": rows}``).

    token_ids: int [N, L] SID token ids of each catalogue row. groups: name -> int array of rows. Groups holding
    exactly the same rows share one root. Raises ValueError for an empty group, ragged/negative ids, or two rows
    with the same SID in one group (the trie could not tell them apart).
    """
    t0 = time.perf_counter()
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2 or token_ids.shape[0] == 0 or token_ids.shape[1] == 0:
        raise ValueError(f"token_ids must be a non-empty [N, levels] array, got shape {token_ids.shape}")
    if (token_ids < 0).any():
        raise ValueError("SID token ids must be >= 0")
    roots, rows = _unique_groups(groups, len(token_ids))
    root_of_row = np.concatenate([np.full(len(r), i, np.int64) for i, r in enumerate(rows)])
    row = np.concatenate(rows).astype(np.int64)
    seqs = token_ids[row].astype(np.int64)  # [M, L]
    order = np.lexsort([*seqs.T[::-1], root_of_row])  # root first, then level 0, 1, ...
    root_of_row, row, seqs = root_of_row[order], row[order], seqs[order]
    vocab, prefix_keys, bits, starts = _build_levels(seqs, root_of_row, n_roots=len(rows))
    if not starts.all():
        dup = int(np.flatnonzero(~starts)[0])
        raise ValueError(f"catalogue rows {int(row[dup - 1])} and {int(row[dup])} have the same SID "
                         f"{seqs[dup].tolist()} in one domain; resolve collisions in the SID artifact")
    trie = SidTrie(vocab=vocab, prefix_keys=prefix_keys, bits=bits, leaf_item=row, roots=roots,
                   root_sizes=[len(r) for r in rows])
    log.info("built SID trie: %d rows, %d roots, %d levels, %.1f MB in %.2f s", len(token_ids), len(rows),
             seqs.shape[1], trie.nbytes / 2**20, time.perf_counter() - t0)
    return trie


def _unique_groups(groups: Mapping[str | None, np.ndarray], n: int) -> tuple[dict, list[np.ndarray]]:
    """Name -> root id, with identical row sets sharing one root; rows of each root sorted."""
    roots, rows, seen = {}, [], {}
    for name, idx in groups.items():
        idx = np.unique(np.asarray(idx, np.int64))
        if len(idx) == 0:
            raise ValueError(f"domain {name!r} has no items")
        if idx[0] < 0 or idx[-1] >= n:
            raise ValueError(f"domain {name!r} refers to rows outside 0..{n - 1}")
        key = idx.tobytes()
        if key not in seen:
            seen[key] = len(rows)
            rows.append(idx)
        roots[name] = seen[key]
    return roots, rows


def _build_levels(seqs: np.ndarray, root: np.ndarray, n_roots: int):
    """Per-level vocab/prefix_keys/bits of lexicographically sorted ``seqs`` [M, L] under ``root`` [M].

    Returns (vocab, prefix_keys, bits, starts) where ``starts`` [M] marks rows that begin a new leaf (False = a
    duplicate SID).
    """
    vocab, bits, prefix_keys = [], [], [np.arange(n_roots, dtype=np.int64)]
    parent, n_parent = root, n_roots  # node id (at the current depth) of every row
    key = root.astype(np.int64)  # [M] mixed-radix key of every row's prefix at the current depth
    changed = root[1:] != root[:-1]  # [M-1] prefix differs from the previous row's
    radix = n_roots
    for level in range(seqs.shape[1]):
        col = seqs[:, level]
        level_vocab = np.unique(col)
        width = len(level_vocab)
        radix *= width
        if radix >= 2**62:
            raise ValueError(f"{seqs.shape[1]} levels of up to {width} tokens overflow 64-bit prefix keys")
        code = np.searchsorted(level_vocab, col)  # [M]
        changed = changed | (col[1:] != col[:-1])
        starts = np.concatenate([[True], changed])  # rows that open a new node at depth level+1
        key = key * width + code
        prefix_keys.append(key[starts])
        packed = np.zeros((n_parent, (width + 7) // 8), np.uint8)
        np.bitwise_or.at(packed, (parent[starts], code[starts] >> 3), (1 << (code[starts] & 7)).astype(np.uint8))
        vocab.append(level_vocab)
        bits.append(packed)
        parent, n_parent = np.cumsum(starts) - 1, int(starts.sum())
    return vocab, prefix_keys, bits, starts


@dataclass
class TrieTables:
    """:class:`SidTrie` arrays as torch tensors on one device, for the vectorised per-step masking.

    ``code_table`` [L, T] maps a token id to its code at each level (-1 if it does not occur there; ids >= T-1
    clamp onto the last column, which is all -1), so a whole prefix [R, t] becomes codes in one gather.
    """

    vocab: list[torch.Tensor]  # [W_l] int64
    prefix_keys: list[torch.Tensor]  # [n_d] int64, d = 0..L
    bits: list[torch.Tensor]  # [n_l, ceil(W_l/8)] uint8
    leaf_item: torch.Tensor  # [n_L] int64
    code_table: torch.Tensor  # [L, T] int64
    radix: torch.Tensor  # [L+1, L] int64: radix[t, i] = W_{i+1} * ... * W_{t-1} (0 for i >= t)
    bit_lut: torch.Tensor  # [256, 8] bool
    spans: list[int]  # spans[t] = W_0 * ... * W_{t-1}: a root's key stride at depth t (Python ints: no syncs)
    max_token_id: int
    min_token_id: int = 0  # smallest SID token id: columns [min_token_id, max_token_id] hold every SID token

    @classmethod
    def from_trie(cls, trie: SidTrie, device: torch.device) -> "TrieTables":
        def to(array):
            return torch.as_tensor(np.ascontiguousarray(array)).to(device)

        max_token = int(max(v[-1] for v in trie.vocab))
        code_table = np.full((trie.levels, max_token + 2), -1, np.int64)
        for level, v in enumerate(trie.vocab):
            code_table[level, v] = np.arange(len(v))
        widths = [len(v) for v in trie.vocab]
        radix = np.zeros((trie.levels + 1, trie.levels), np.int64)
        for t in range(trie.levels + 1):
            for i in range(t):
                radix[t, i] = int(np.prod(widths[i + 1:t], dtype=np.int64))
        return cls(vocab=[to(v) for v in trie.vocab], prefix_keys=[to(k) for k in trie.prefix_keys],
                   bits=[to(b) for b in trie.bits], leaf_item=to(trie.leaf_item), code_table=to(code_table),
                   radix=to(radix), bit_lut=_BIT_LUT.bool().to(device),
                   spans=[int(np.prod(widths[:t], dtype=np.int64)) for t in range(trie.levels + 1)],
                   max_token_id=max_token, min_token_id=int(min(v[0] for v in trie.vocab)))

    @property
    def levels(self) -> int:
        return len(self.vocab)

    def child(self, level: int, node: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Vectorised :meth:`SidTrie.child`: node [R] at depth ``level``, token [R] -> child [R] (-1 if invalid)."""
        code = self.code_table[level, token.clamp(0, self.code_table.shape[1] - 1)]  # [R]
        key = self.prefix_keys[level][node.clamp(min=0)] * len(self.vocab[level]) + code  # [R]
        return self._find(level + 1, key, (node >= 0) & (code >= 0))

    def walk(self, roots: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """roots [R], prefix [R, t] token ids (t <= L) -> node [R] at depth t (-1 where not a valid prefix).

        One gather + one ``searchsorted`` whatever t: the prefix's mixed-radix key is looked up directly.
        """
        depth = prefix.shape[1]
        if depth == 0:
            return roots
        levels = torch.arange(depth, device=prefix.device)
        codes = self.code_table[levels, prefix.clamp(0, self.code_table.shape[1] - 1)]  # [R, t]
        key = roots * self.spans[depth] + (codes.clamp(min=0) * self.radix[depth, :depth]).sum(1)  # [R]
        return self._find(depth, key, (roots >= 0) & (codes >= 0).all(1))

    def _find(self, depth: int, key: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        keys = self.prefix_keys[depth]
        pos = torch.searchsorted(keys, key).clamp_(max=len(keys) - 1)  # [R]
        return torch.where(valid & (keys[pos] == key), pos, -1)

    def allowed_codes(self, level: int, node: torch.Tensor) -> torch.Tensor:
        """node [R] at depth ``level`` -> bool [R, W_level]: which of ``vocab[level]`` may follow (none for -1)."""
        packed = self.bits[level][node.clamp(min=0)]  # [R, nbytes]
        allowed = self.bit_lut[packed.long()].flatten(1)[:, : len(self.vocab[level])]  # [R, W]
        return allowed & (node >= 0).unsqueeze(1)


def save_trie(trie: SidTrie, path, **meta) -> None:
    """Write ``trie`` (+ JSON-able ``meta``, e.g. eos/pad ids) to one ``.npz`` file (for vLLM worker processes)."""
    import json

    arrays = {"leaf_item": trie.leaf_item, "root_sizes": np.asarray(trie.root_sizes, np.int64)}
    for level in range(trie.levels):
        arrays.update({f"vocab_{level}": trie.vocab[level], f"bits_{level}": trie.bits[level]})
    arrays.update({f"prefix_keys_{depth}": keys for depth, keys in enumerate(trie.prefix_keys)})
    header = {"levels": trie.levels, "roots": [[name, node] for name, node in trie.roots.items()], "meta": meta}
    np.savez(path, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)


def load_trie(path) -> tuple[SidTrie, dict]:
    """Inverse of :func:`save_trie`: returns ``(trie, meta)``."""
    import json

    with np.load(path) as data:
        header = json.loads(data["header"].tobytes().decode())
        levels = header["levels"]
        vocab, bits = [data[f"vocab_{i}"] for i in range(levels)], [data[f"bits_{i}"] for i in range(levels)]
        prefix_keys = [data[f"prefix_keys_{d}"] for d in range(levels + 1)]
        trie = SidTrie(vocab=vocab, prefix_keys=prefix_keys, bits=bits, leaf_item=data["leaf_item"],
                       roots={name: int(node) for name, node in header["roots"]},
                       root_sizes=data["root_sizes"].tolist())
    return trie, header["meta"]
