"""What decoding needs to know about items: each item's SID as token strings, and its domain.

Decoding never parses SIDs: it maps token strings to ids with ``tokenizer.convert_tokens_to_ids`` and builds the
trie from those ids. A :class:`Catalogue` comes from the SID artifact (+ the dataset's item domains) or, in tests,
from a plain dict.

>>> cat = Catalogue.from_sids({"i1": ["<a_1>", "<b_2>"], "i2": "<a_1><b_3>"}, domains={"i1": "Toys", "i2": "Toys"})
>>> cat.sid_string("i2"), cat.levels, cat.domain_names()
('<a_1><b_3>', 2, ['Toys'])
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from decoding.trie import SidTrie, build_trie

log = logging.getLogger(__name__)


@dataclass
class Catalogue:
    """``item_ids[i]``'s SID is ``[tokens[j] for j in token_index[i]]``; ``domains[i]`` its domain (or None).

    token_index: int32 [N, L] into ``tokens`` (the distinct SID token strings). All items have L levels.
    """

    item_ids: list[str]
    tokens: list[str]
    token_index: np.ndarray
    domains: list[str | None]
    _row: dict[str, int] = field(init=False, repr=False)
    _tries: dict[bytes, SidTrie] = field(init=False, repr=False, default_factory=dict)
    _sizes: Counter | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.token_index = np.asarray(self.token_index, dtype=np.int32)
        n = len(self.item_ids)
        if self.token_index.ndim != 2 or self.token_index.shape[0] != n or n == 0:
            raise ValueError(f"token_index must be [N={n} > 0, levels], got shape {self.token_index.shape}")
        if len(self.domains) != n:
            raise ValueError(f"{len(self.domains)} domains for {n} items")
        if self.token_index.min() < 0 or self.token_index.max() >= len(self.tokens):
            raise ValueError("token_index refers to tokens outside the token list")
        self._row = {item_id: i for i, item_id in enumerate(self.item_ids)}
        if len(self._row) != n:
            dup = Counter(self.item_ids).most_common(1)[0][0]
            raise ValueError(f"duplicate item id {dup!r} in the catalogue")

    # ----- constructors
    @classmethod
    def from_sids(cls, sids: Mapping[str, Sequence[str] | str],
                  domains: Mapping[str, str] | None = None) -> "Catalogue":
        """``{item_id: ["<a_1>", "<b_2>"] or "<a_1><b_2>"}`` (+ ``{item_id: domain}``) -> Catalogue."""
        from tokenization.sid_format import split_sid_string

        rows = [split_sid_string(s) if isinstance(s, str) else list(s) for s in sids.values()]
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise ValueError(f"SIDs have different numbers of levels {sorted(lengths)}; all items need the same")
        tokens = sorted({t for r in rows for t in r})
        index = {t: j for j, t in enumerate(tokens)}
        token_index = np.array([[index[t] for t in r] for r in rows], dtype=np.int32)
        return cls(list(sids), tokens, token_index, _domains_for(list(sids), domains))

    @classmethod
    def from_artifact(cls, artifact, dataset: Any = None) -> "Catalogue":
        """From a :class:`tokenization.artifact.SidArtifact`; domains from ``dataset`` (a RecDataset, or a mapping
        ``{item_id: domain}``; None = no domains, one global trie)."""
        offsets = np.concatenate([[0], np.cumsum(artifact.codebook_sizes)[:-1]])  # all_tokens() is level-major
        token_index = np.asarray(artifact.codes, dtype=np.int64) + offsets[None, :]
        item_ids = list(artifact.item_ids)
        return cls(item_ids, list(artifact.all_tokens()), token_index, _domains_for(item_ids, dataset))

    @classmethod
    def synthetic(cls, n_items: int, levels: int = 3, codebook_size: int = 256, seed: int = 0,
                  n_domains: int = 0) -> "Catalogue":
        """``n_items`` distinct uniform-random SIDs (ids ``item0``...), optionally spread over ``d0``.. domains —
        for tests and benchmarks."""
        from tokenization.sid_format import all_sid_tokens

        if n_items > codebook_size ** levels:
            raise ValueError(f"{n_items} distinct SIDs do not fit in {levels} levels of {codebook_size} codes")
        rng = np.random.default_rng(seed)
        codes = np.zeros((0, levels), dtype=np.int64)
        while len(codes) < n_items:  # draw extra, drop duplicates, keep the first n_items in draw order
            more = rng.integers(0, codebook_size, (int(1.1 * (n_items - len(codes))) + 16, levels))
            merged = np.concatenate([codes, more])
            _, first = np.unique(merged, axis=0, return_index=True)
            codes = merged[np.sort(first)]
        codes = codes[:n_items]
        item_ids = [f"item{i}" for i in range(n_items)]
        domains = [f"d{i % n_domains}" for i in range(n_items)] if n_domains else [None] * n_items
        offsets = np.arange(levels) * codebook_size  # all_sid_tokens order: level-major
        return cls(item_ids, all_sid_tokens([codebook_size] * levels), codes + offsets[None, :], domains)

    # ----- lookups
    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def levels(self) -> int:
        return int(self.token_index.shape[1])

    def row(self, item_id: str) -> int:
        try:
            return self._row[item_id]
        except KeyError:
            raise KeyError(f"item {item_id!r} is not in the catalogue ({len(self)} items)") from None

    def sid_tokens(self, item_id: str) -> list[str]:
        return [self.tokens[j] for j in self.token_index[self.row(item_id)]]

    def sid_string(self, item_id: str) -> str:
        """SID tokens written without spaces (as tokenization.sid_format writes them; a test checks equality)."""
        return "".join(self.sid_tokens(item_id))

    def domain_names(self) -> list[str]:
        return sorted({d for d in self.domains if d is not None})

    def domain_size(self, domain: str | None) -> int:
        """Items in ``domain`` (None = the whole catalogue); 0 for a domain with no items."""
        if domain is None:
            return len(self)
        if self._sizes is None:
            self._sizes = Counter(self.domains)
        return self._sizes.get(domain, 0)

    def domain_rows(self) -> dict[str | None, np.ndarray]:
        """``{None: all rows, domain: its rows, ...}`` — the trie's roots."""
        groups: dict[str | None, np.ndarray] = {None: np.arange(len(self))}
        if self.domain_names():
            codes, names = _factorize(self.domains)
            for j, name in enumerate(names):
                if name is not None:
                    groups[name] = np.flatnonzero(codes == j)
        return groups

    # ----- tokenizer-dependent
    def token_ids(self, tokenizer) -> np.ndarray:
        """int64 [N, L] token ids of every item's SID; ValueError if a SID token is not in the tokenizer."""
        ids = np.asarray(_checked_token_ids(tokenizer, self.tokens), dtype=np.int64)  # [len(tokens)]
        return ids[self.token_index]

    def trie(self, tokenizer) -> SidTrie:
        """The trie over this catalogue's SID token ids under ``tokenizer`` (built once per id mapping)."""
        ids = np.asarray(_checked_token_ids(tokenizer, self.tokens), dtype=np.int64)
        key = ids.tobytes()
        if key not in self._tries:
            self._tries[key] = build_trie(ids[self.token_index], self.domain_rows())
        return self._tries[key]


def _checked_token_ids(tokenizer, tokens: list[str]) -> list[int]:
    """``convert_tokens_to_ids`` with a check: a SID token missing from the tokenizer (None, or the unk id) raises."""
    ids = tokenizer.convert_tokens_to_ids(tokens)
    vocab = tokenizer.get_vocab()
    missing = [t for t, i in zip(tokens, ids) if i is None or t not in vocab or vocab[t] != i]
    if missing:
        raise ValueError(f"{len(missing)} of {len(tokens)} SID tokens are not in the tokenizer, e.g. {missing[:3]}; "
                         "add them with tokenization.vocab.extend_vocabulary (and resize the model)")
    return list(ids)


def _domains_for(item_ids: list[str], source: Any) -> list[str | None]:
    if source is None:
        return [None] * len(item_ids)
    if not isinstance(source, Mapping):  # a RecDataset: items table with item_id and domain columns
        source = dict(zip(source.items["item_id"], source.items["domain"]))
    missing = [i for i in item_ids if i not in source]
    if missing:
        raise ValueError(f"{len(missing)} items have no domain, e.g. {missing[:3]}")
    return [source[i] for i in item_ids]


def _factorize(values: list) -> tuple[np.ndarray, list]:
    names = list(dict.fromkeys(values))
    index = {v: j for j, v in enumerate(names)}
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values)), names
