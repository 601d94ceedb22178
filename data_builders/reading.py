"""Reading source files (plain or .gz) with errors that name the file and line.

Every reader decodes UTF-8 strictly: a byte sequence that is not UTF-8 raises :class:`DataError` with the line
number, instead of a ``UnicodeDecodeError`` from deep inside a library.
"""

from __future__ import annotations

import ast
import math
import gzip
import zlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from data_builders.dataset import DataError, data_error


def _open_bytes(path: Path):
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def find_plain_or_gz(data_dir: Path, filename: str, required: bool = True) -> Path | None:
    """``<data_dir>/<filename>`` or its ``.gz`` twin; both present is ambiguous and an error."""
    found = [p for p in (data_dir / filename, data_dir / f"{filename}.gz") if p.exists()]
    if len(found) > 1:
        raise DataError(f"{found[0]}: both {found[0].name} and {found[1].name} exist; keep one")
    if not found and required:
        raise DataError(f"{data_dir / filename}: file not found (nor its .gz)")
    return found[0] if found else None


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` (1-based, newline stripped) from a plain or gzipped UTF-8 file."""
    path = Path(path)
    n = 0
    with _open_bytes(path) as f:
        try:
            for n, raw in enumerate(f, start=1):
                try:
                    yield n, raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise data_error(path, n, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise data_error(path, n + 1, f"truncated or corrupt gzip file ({e})") from None


def read_text(path: str | os.PathLike) -> str:
    """Whole file as text (UTF-8, plain or gzipped); the error names the line of a bad byte."""
    return "\n".join(line for _, line in iter_lines(path))


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file (plain or .gz)."""
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise data_error(path, n, f"malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise data_error(path, n, f"expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def read_json(path: str | os.PathLike) -> Any:
    """A whole JSON document (plain or .gz)."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise data_error(path, e.lineno, f"malformed JSON ({e.msg} at column {e.colno})") from None


def parse_literal_list(text: str, path: str | os.PathLike, record: str | int, column: str) -> list:
    """Parse a Python-literal list stored as a string (``"[1, 2]"``, ``"['a', 'b']"``) safely.

    Uses ``ast.literal_eval`` (never ``eval``): only literals are accepted, so a CSV cannot run code.
    """
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise data_error(path, record, f"column {column!r} is not a Python list literal: {text[:80]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise data_error(path, record, f"column {column!r} should be a list, got {type(value).__name__}")
    return list(value)


def sha256_content(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, decompressed when gzipped (so ``x.csv`` and ``x.csv.gz`` hash alike)."""
    import hashlib

    h = hashlib.sha256()
    try:
        with _open_bytes(Path(path)) as f:
            while block := f.read(1 << 20):
                h.update(block)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise data_error(path, None, f"truncated or corrupt gzip file ({e})") from None
    return h.hexdigest()


# Values that scraped metadata uses for "nothing here" (compared lower-cased, after stripping).
MISSING_MARKERS = frozenset({"", "nan", "none", "null", "[]"})




def _looks_like_list(text: str) -> bool:
    return text.startswith("[") and text.endswith("]")


def clean_text(value: Any, path: str | Path | None, record: str | int, field: str) -> str:
    """Normalise a text field: None / "nan" / "[]" -> "", a list (or stringified list) -> its parts joined by " ".

    >>> clean_text(["Great game.", "nan", "Fun."], None, 1, "description")
    'Great game. Fun.'
    """
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "" if isinstance(value, float) and math.isnan(value) else str(value)
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in MISSING_MARKERS:
            return ""
        if _looks_like_list(text):
            try:
                return " ".join(clean_list(parse_literal_list(text, path, record, field), path, record, field))
            except DataError:
                return text  # free text that merely starts with "[" and ends with "]"
        return text
    if isinstance(value, (list, tuple)):
        return " ".join(clean_list(value, path, record, field))
    raise data_error(path, record, f"field {field!r} should be text or a list of text, got {type(value).__name__}")


def clean_list(value: Any, path: str | Path | None, record: str | int, field: str) -> list[str]:
    """Normalise a list field to ``list[str]``: missing -> [], a plain string -> [string], stringified list parsed.

    Nested lists (old Amazon ``categories`` were lists of category paths) are flattened; empty parts are dropped.

    >>> clean_list("['Games', 'PC', '']", None, 1, "categories")
    ['Games', 'PC']
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in MISSING_MARKERS:
            return []
        if _looks_like_list(text):
            return clean_list(parse_literal_list(text, path, record, field), path, record, field)
        return [text]
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for part in value:
            if isinstance(part, (list, tuple)):
                out.extend(clean_list(part, path, record, field))
            elif text := clean_text(part, path, record, field):
                out.append(text)
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = clean_text(value, path, record, field)
        return [text] if text else []
    raise data_error(path, record, f"field {field!r} should be a list of text, got {type(value).__name__}")
