"""Item texts and item vectors for the dense methods: serialised metadata ("meta") or the title alone ("title").

* ``meta``: Mini_XPERT Algorithm 1 (data_builders/serialize.py); its embeddings are the artifact built by
  ``python -m data_builders.build`` (``embeddings:`` in the eval config), rows aligned with the dataset's items.
* ``title``: the title alone, encoded with the same frozen encoder on first use and cached by content hash under
  ``$GENREC_CACHE`` (default ``~/.cache/genrec``), so no extra build step.

No usable text: an item without a title falls back to its serialised metadata; an item with no text at all is
encoded from the empty string (all such items share one vector and are ordered by the catalogue's tie order) and
has no BM25 terms (score 0).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from data_builders.dataset import cache_root
from data_builders.serialize import clean_value, serialize_item

log = logging.getLogger(__name__)
TEXTS = ("meta", "title")


def item_texts(items: Any, text: str) -> list[str]:
    """One text per item row (``items``: the dataset's items table or a list of dicts)."""
    if text not in TEXTS:
        raise ValueError(f"item text {text!r}; choose from {TEXTS}")
    rows = items.to_list() if hasattr(items, "to_list") else list(items)
    meta = [serialize_item(r) for r in rows]
    if text == "meta":
        return meta
    return [clean_value(r.get("title")) or m for r, m in zip(rows, meta)]


def encode_texts(texts: list[str], encoder: str, batch_size: int = 128) -> np.ndarray:
    """[N, d] unit vectors from the frozen encoder ``encoder`` (cached by encoder + texts)."""
    from data_builders.embeddings import TextEncoder, embed_texts_cached

    enc = TextEncoder(encoder, device="cpu")
    vectors, _, hit = embed_texts_cached(enc, texts, batch_size, cache_root())
    log.info("%d item texts encoded with %s (%s)", len(texts), encoder, "cache hit" if hit else "computed")
    return vectors


def item_vectors(dataset: Any, embeddings: np.ndarray | None, text: str, encoder: str) -> np.ndarray:
    """Item vectors [N, d] (rows = dataset items) for ``text`` = meta (the artifact) or title (encoded here)."""
    n = len(dataset.item_ids)
    if text == "title":
        return encode_texts(item_texts(dataset.items, "title"), encoder)
    if text != "meta":
        raise ValueError(f"item text {text!r}; choose from {TEXTS}")
    if embeddings is None:
        raise ValueError("text=meta needs the item embeddings artifact (config `embeddings`)")
    if embeddings.ndim != 2 or len(embeddings) != n:
        raise ValueError(f"embeddings of shape {embeddings.shape} for a dataset of {n} items")
    return np.asarray(embeddings, dtype=np.float32)
