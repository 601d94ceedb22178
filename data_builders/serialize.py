"""Item text serialisation (Mini_XPERT Algorithm 1).

Fields in priority order Title, Brand, Category, Features, Description; missing values (None, NaN, "", "[]") are
skipped; HTML is stripped; each field becomes a ``Field: value;`` segment. With a length budget (characters, or
tokens of a given tokenizer), SmartTruncate keeps Title and Brand whole and cuts the lowest-priority text first
(Description, then Features, then Category), word by word — it never blindly cuts the tail.

>>> serialize_item({"title": "Stapler", "brand": "Acme", "description": "<b>Heavy</b> duty"})
'Title: Stapler; Brand: Acme; Description: Heavy duty;'
"""

from __future__ import annotations

import html
import re
from typing import Callable, Mapping

# (label, item field) in priority order; the first two are never truncated.
FIELDS = (("Title", "title"), ("Brand", "brand"), ("Category", "categories"), ("Features", "features"),
          ("Description", "description"))
PROTECTED = {"Title", "Brand"}
MISSING = {"", "nan", "none", "null", "[]", "n/a"}

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def strip_html(text: str) -> str:
    """Remove comments, script/style blocks and tags; unescape entities; collapse whitespace."""
    text = _TAG.sub(" ", _SCRIPT.sub(" ", _COMMENT.sub(" ", text)))
    return _SPACE.sub(" ", html.unescape(text)).strip()


def clean_value(value) -> str:
    """A field value as clean text: lists joined with ", ", HTML stripped, missing markers -> ""."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(v for v in (clean_value(x) for x in value) if v)
    text = strip_html(str(value))
    return "" if text.lower() in MISSING else text


def item_segments(item: Mapping) -> list[tuple[str, str]]:
    """``[(label, clean value), ...]`` in priority order, missing fields skipped."""
    segments = [(label, clean_value(item.get(key))) for label, key in FIELDS]
    return [(label, value) for label, value in segments if value]


def render(segments: list[tuple[str, str]]) -> str:
    return " ".join(f"{label}: {value};" for label, value in segments)


def _truncate_words(segments, i: int, fits: Callable[[str], bool]) -> list[tuple[str, str]]:
    """Keep as many leading words of segment ``i`` as fit (binary search); drop the segment if none fit."""
    label, value = segments[i]
    words = value.split(" ")
    lo, hi = 0, len(words)  # invariant: keeping `lo` words fits (0 = segment dropped)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = segments[:i] + [(label, " ".join(words[:mid]))] + segments[i + 1 :]
        lo, hi = (mid, hi) if fits(render(trial)) else (lo, mid - 1)
    kept = " ".join(words[:lo]).rstrip(" ,;:")
    return segments[:i] + ([(label, kept)] if kept else []) + segments[i + 1 :]


def serialize_item(item: Mapping, max_length: int | None = None, count: Callable[[str], int] = len) -> str:
    """Serialise one item (a mapping with title/brand/categories/features/description).

    ``max_length`` is a budget in the units of ``count`` (characters by default; pass a token counter for a token
    budget). Title and Brand are always kept whole, even if they alone exceed the budget.
    """
    segments = item_segments(item)
    if max_length is not None:
        # Every word costs at least one unit (character or token), so more than `max_length` words never fit:
        # cutting there first keeps the search below cheap on multi-thousand-word descriptions.
        segments = [(label, v if label in PROTECTED else " ".join(v.split(" ")[:max_length])) for label, v in segments]
    if max_length is None or count(render(segments)) <= max_length:
        return render(segments)
    fits = lambda text: count(text) <= max_length  # noqa: E731
    for i in reversed(range(len(segments))):
        if segments[i][0] in PROTECTED:
            continue
        segments = _truncate_words(segments, i, fits)
        if fits(render(segments)):
            break
    return render(segments)


def token_counter(tokenizer) -> Callable[[str], int]:
    """A ``count`` for :func:`serialize_item` measuring length in ``tokenizer`` tokens (special tokens excluded)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
