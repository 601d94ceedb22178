"""SID token strings: the ONE place where semantic IDs are formatted and parsed.

A semantic ID (SID) is a tuple of integer codes, one per level. Level ``l`` (0-based) writes its code ``c`` as the
token ``<{letter}_{c}>`` with letters ``a, b, c, d, ...``, so ``(12, 5, 200, 0)`` is written
``<a_12><b_5><c_200><d_0>`` — no spaces (a space before an added token becomes a token of its own).

The same strings are used by the MiniOneRec / LC-Rec ``index.json`` files (``{"item_id": ["<a_1>", "<b_2>",
"<c_3>"]}``), which :func:`read_index_json` / :func:`write_index_json` read and write.

Every other module (artifact, vocabulary, SFT prompts, decoding, evaluation) must go through these functions.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"
TOKEN_FORMAT = "<{letter}_{code}>"
_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")
_STRING_RE = re.compile(r"(?:<[a-z]_\d+>)+")


def sid_token(level: int, code: int) -> str:
    """The token for ``code`` at 0-based ``level``: ``sid_token(1, 5) == "<b_5>"``."""
    if not 0 <= level < len(LEVEL_LETTERS):
        raise ValueError(f"SID level {level} out of range 0..{len(LEVEL_LETTERS) - 1}")
    if code < 0:
        raise ValueError(f"SID code must be >= 0, got {code} at level {level}")
    return TOKEN_FORMAT.format(letter=LEVEL_LETTERS[level], code=int(code))


def parse_sid_token(token: str) -> tuple[int, int]:
    """``"<b_5>"`` -> ``(1, 5)`` (level, code). Raises ValueError on anything else."""
    m = _TOKEN_RE.fullmatch(token)
    if m is None:
        raise ValueError(f"not a SID token: {token!r} (expected like '<a_12>')")
    return LEVEL_LETTERS.index(m.group(1)), int(m.group(2))


def sid_tokens(codes: Sequence[int]) -> list[str]:
    """``(12, 5, 200)`` -> ``["<a_12>", "<b_5>", "<c_200>"]``."""
    return [sid_token(level, int(c)) for level, c in enumerate(codes)]


def sid_string(codes: Sequence[int]) -> str:
    """``(12, 5, 200)`` -> ``"<a_12><b_5><c_200>"`` (no spaces)."""
    return "".join(sid_tokens(codes))


def parse_sid_tokens(tokens: Sequence[str]) -> tuple[int, ...]:
    """``["<a_12>", "<b_5>"]`` -> ``(12, 5)``; levels must be a, b, c, ... in order."""
    codes = []
    for position, token in enumerate(tokens):
        level, code = parse_sid_token(token)
        if level != position:
            raise ValueError(f"SID token {token!r} at position {position}: expected level "
                             f"{LEVEL_LETTERS[position]!r} in {list(tokens)}")
        codes.append(code)
    return tuple(codes)


def split_sid_string(text: str) -> list[str]:
    """``"<a_12><b_5>"`` -> ``["<a_12>", "<b_5>"]``. Surrounding whitespace is ignored; anything else raises."""
    text = text.strip()
    if not _STRING_RE.fullmatch(text):
        raise ValueError(f"not a SID string: {text!r} (expected like '<a_12><b_5><c_200>', no spaces)")
    return [m.group(0) for m in _TOKEN_RE.finditer(text)]


def parse_sid_string(text: str) -> tuple[int, ...]:
    """``"<a_12><b_5><c_200>"`` -> ``(12, 5, 200)``."""
    return parse_sid_tokens(split_sid_string(text))


def all_sid_tokens(codebook_sizes: Sequence[int]) -> list[str]:
    """Every token of a SID vocabulary, level by level, code by code: ``[<a_0>.., <b_0>.., ...]``."""
    return [sid_token(level, code) for level, size in enumerate(codebook_sizes) for code in range(int(size))]


def read_index_json(path: str | os.PathLike, id_prefix: str = "") -> tuple[list[str], np.ndarray]:
    """Read a MiniOneRec / LC-Rec ``index.json``: ``{"item_id": ["<a_1>", "<b_2>", "<c_3>"], ...}``.

    Returns ``(item_ids, codes)`` with ``codes`` int64 ``[N, levels]`` in file order; ``id_prefix`` is prepended
    to every id (e.g. ``"Industrial_and_Scientific:"`` for a merged dataset). Raises ValueError naming the key.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read SID index: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty JSON object {{item_id: [sid tokens]}}")
    item_ids, rows = [], []
    for key, tokens in raw.items():
        if not isinstance(tokens, list):
            raise ValueError(f"{path}, key {key!r}: expected a list of SID tokens, got {type(tokens).__name__}")
        try:
            rows.append(parse_sid_tokens(tokens))
        except ValueError as e:
            raise ValueError(f"{path}, key {key!r}: {e}") from None
        if rows and len(rows[-1]) != len(rows[0]):
            raise ValueError(f"{path}, key {key!r}: {len(rows[-1])} levels, but the first item has {len(rows[0])}; "
                             f"every SID must have the same number of levels (mixed lengths are not supported by "
                             f"decoding: README, Collisions and SID length)")
        item_ids.append(id_prefix + str(key))
    return item_ids, np.asarray(rows, dtype=np.int64)


def write_index_json(
    path: str | os.PathLike, item_ids: Sequence[str], codes: np.ndarray, strip_prefix: str = ""
) -> None:
    """Write ``{"item_id": ["<a_1>", "<b_2>", ...]}`` in item order (``strip_prefix`` removed from ids)."""
    out = {}
    for item_id, row in zip(item_ids, codes):
        key = item_id[len(strip_prefix):] if strip_prefix and item_id.startswith(strip_prefix) else item_id
        out[key] = sid_tokens(row)
    Path(path).write_text(json.dumps(out, ensure_ascii=False) + "\n", encoding="utf-8")
