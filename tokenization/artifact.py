"""The SID artifact: the one place every later stage (SFT, RL, decoding, evaluation) reads semantic IDs from.

On disk (one directory, written atomically; same inputs + seed -> byte-identical files)::

    sids/
      codes.npy          int32 [N, levels]  (levels *including* the de-duplication level, if any; one length
                                            for every item: mixed lengths are refused, see check_codes)
      item_ids.json      [N] item ids, row i <-> codes[i] <-> items/embeddings row of the dataset
      index.json         the same SIDs in MiniOneRec / LC-Rec format {"item_id": ["<a_1>", "<b_2>", ...]}
      codebooks/*.npy    what produced the codes (RQ centroids [L, K, d], FSQ weights); absent for external SIDs
      quality.json       see tokenization.quality.quality_report
      quality.png
      meta.json          format, algorithm, levels, dedup_level, codebook_sizes, token_format, seed, inputs' hashes,
                         vocab_init, config, command, versions, content_hashes

Load with :func:`load_sid_artifact`. Token strings come from :mod:`tokenization.sid_format` only.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.dataset import DataError, atomic_dir, read_artifact_meta, sha256_file, write_json
from tokenization.sid_format import (
    all_sid_tokens,
    parse_sid_string,
    parse_sid_tokens,
    sid_string,
    sid_tokens,
    write_index_json,
)

FORMAT = "genrec-sids/1"


@dataclass
class SidArtifact:
    """Loaded SIDs: ``codes[i]`` int64 [levels] is the SID of ``item_ids[i]``; ``meta`` is meta.json."""

    item_ids: list[str]
    codes: np.ndarray
    meta: dict[str, Any]
    path: Path | None = None
    quality: dict[str, Any] | None = None
    _row: dict[str, int] = field(init=False, repr=False)
    _item: dict[tuple[int, ...], str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64)
        check_codes(self.item_ids, self.codes, self.meta["codebook_sizes"], where=str(self.path or "<sids>"))
        self._row = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self._item = {tuple(row): item_id for row, item_id in zip(self.codes.tolist(), self.item_ids)}

    @property
    def levels(self) -> int:
        return self.codes.shape[1]

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(s) for s in self.meta["codebook_sizes"]]

    def sid_codes(self, item_id: str) -> tuple[int, ...]:
        """``"Industrial_and_Scientific:0"`` -> ``(12, 5, 200, 0)``; KeyError for an unknown item."""
        try:
            return tuple(int(c) for c in self.codes[self._row[item_id]])
        except KeyError:
            raise KeyError(f"item {item_id!r} has no SID in {self.path or 'this artifact'}") from None

    def sid_tokens(self, item_id: str) -> list[str]:
        """``["<a_12>", "<b_5>", "<c_200>", "<d_0>"]``."""
        return sid_tokens(self.sid_codes(item_id))

    def sid_string(self, item_id: str) -> str:
        """``"<a_12><b_5><c_200><d_0>"`` (no spaces)."""
        return sid_string(self.sid_codes(item_id))

    def item_for_sid(self, sid: str | Sequence[str] | Sequence[int]) -> str:
        """The item carrying ``sid`` (a SID string, a token list or a code tuple); KeyError if none."""
        key = self._key(sid)
        if key not in self._item:
            raise KeyError(f"no item has SID {sid!r}")
        return self._item[key]

    def has_sid(self, sid: str | Sequence[str] | Sequence[int]) -> bool:
        """True if ``sid`` is complete and names an item (malformed strings give False)."""
        try:
            return self._key(sid) in self._item
        except ValueError:
            return False

    def all_tokens(self) -> list[str]:
        """Every SID token, level by level, code by code — the order tokens are added to a tokenizer."""
        return all_sid_tokens(self.codebook_sizes)

    def sid_strings(self) -> list[str]:
        """SID string of every item, in item order."""
        return [sid_string(row) for row in self.codes.tolist()]

    @staticmethod
    def _key(sid: str | Sequence[str] | Sequence[int]) -> tuple[int, ...]:
        if isinstance(sid, str):
            return parse_sid_string(sid)
        sid = list(sid)
        if sid and isinstance(sid[0], str):
            return parse_sid_tokens(sid)
        return tuple(int(c) for c in sid)


def check_codes(item_ids: Sequence[str], codes: np.ndarray, codebook_sizes: Sequence[int], where: str) -> None:
    """Raise DataError unless ids are unique, codes fit their codebooks and every SID names exactly one item."""
    if codes.ndim != 2 or len(codes) != len(item_ids):
        raise DataError(f"{where}: codes shape {codes.shape} does not match {len(item_ids)} item ids")
    if codes.shape[1] != len(codebook_sizes):
        raise DataError(f"{where}: codes have {codes.shape[1]} levels but meta lists {len(codebook_sizes)} codebooks")
    if len(set(item_ids)) != len(item_ids):
        dup = Counter(item_ids).most_common(1)[0][0]
        raise DataError(f"{where}: duplicate item id {dup!r}")
    if (codes < 0).any():  # the usual padding of ragged SIDs: say so rather than "code -1 outside 0..K-1"
        row, level = map(int, np.argwhere(codes < 0)[0])
        raise DataError(f"{where}: item {item_ids[row]!r} level {level} has code {codes[row, level]}; codes are >= 0 "
                        f"and every SID has all {codes.shape[1]} levels (SIDs of mixed lengths, e.g. padded with -1, "
                        f"are not supported: README, Collisions and SID length)")
    bad = codes >= np.asarray(codebook_sizes)[None, :]
    if bad.any():
        row, level = map(int, np.argwhere(bad)[0])
        raise DataError(f"{where}: item {item_ids[row]!r} level {level} code {codes[row, level]} outside "
                        f"0..{codebook_sizes[level] - 1}")
    _, first, counts = np.unique(codes, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        row = int(first[np.argmax(counts > 1)])
        raise DataError(f"{where}: {int((counts > 1).sum())} SIDs name more than one item, e.g. "
                        f"{sid_string(codes[row])} (item {item_ids[row]!r}); resolve collisions when building")


def write_sid_artifact(
    out_dir: str | os.PathLike, item_ids: Sequence[str], codes: np.ndarray, meta: dict[str, Any],
    quality: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None,
    plot_title: str = "", extra_files: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write the artifact atomically; ``meta`` must hold at least ``codebook_sizes``; ``extra_files`` (name ->
    bytes) are written and hashed beside the rest. Returns the full meta."""
    check_codes(list(item_ids), codes, meta["codebook_sizes"], where=str(out_dir))
    meta = {"format": FORMAT, "levels": int(codes.shape[1]), "n_items": len(item_ids), **meta}
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "codes.npy", codes.astype(np.int32))
        write_json(tmp / "item_ids.json", list(item_ids))
        write_index_json(tmp / "index.json", item_ids, codes)
        if arrays:
            (tmp / "codebooks").mkdir()
            for name, array in sorted(arrays.items()):
                np.save(tmp / "codebooks" / f"{name}.npy", np.ascontiguousarray(array))
        if quality is not None:
            from tokenization.quality import plot_quality

            write_json(tmp / "quality.json", quality)
            plot_quality(quality, tmp / "quality.png", title=plot_title)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        meta["content_hashes"] = {name: sha256_file(tmp / name) for name in files}
        write_json(tmp / "meta.json", meta)
    return meta


# Files whose content hash in meta.json is checked on every load (cheap: a few MB at 1M items). quality.json and
# the plot are reports, codebooks only matter to sid_init: centroids (checked there if they change).
CHECKED_FILES = ("item_ids.json", "codes.npy", "index.json")


def check_content_hashes(path: Path, meta: dict[str, Any], names: Sequence[str] = CHECKED_FILES) -> None:
    """Refuse an artifact whose files no longer match the hashes recorded when it was written."""
    recorded = meta.get("content_hashes") or {}
    for name in names:
        if name in recorded:
            f = path / name
            if not f.is_file():
                raise DataError(f"{f}: missing (the SID artifact's meta.json lists it); rebuild with "
                                "`python -m tokenization.build`")
            if sha256_file(f) != recorded[name]:
                raise DataError(f"{f}: content changed since the SID artifact was written (sha256 differs from "
                                "meta.json content_hashes); rebuild it with `python -m tokenization.build`")


def load_sid_artifact(path: str | os.PathLike) -> SidArtifact:
    """Load a directory written by :func:`write_sid_artifact` (validated: files match their recorded hashes, every
    SID names exactly one item)."""
    from data_builders.cli import load_npy, read_json_file

    path = Path(path)
    meta = read_artifact_meta(path, FORMAT, "a SID artifact", "python -m tokenization.build")
    check_content_hashes(path, meta)
    item_ids = read_json_file(path / "item_ids.json", "SID artifact item ids")
    codes = load_npy(path / "codes.npy", "SID codes")
    if codes.ndim != 2 or codes.shape[1] != meta["levels"] or len(codes) != len(item_ids):
        raise DataError(f"{path}: codes.npy has shape {list(codes.shape)}, meta.json says {meta['levels']} levels "
                        f"and item_ids.json {len(item_ids)} items")
    quality_path = path / "quality.json"
    quality = read_json_file(quality_path, "SID quality report") if quality_path.exists() else None
    return SidArtifact(item_ids=item_ids, codes=codes, meta=meta, path=path, quality=quality)


def export_index_json(artifact: SidArtifact, path: str | os.PathLike, strip_prefix: str = "") -> None:
    """Write the artifact's SIDs as a MiniOneRec / LC-Rec ``index.json`` (``strip_prefix`` removed from ids)."""
    write_index_json(path, artifact.item_ids, artifact.codes, strip_prefix=strip_prefix)
