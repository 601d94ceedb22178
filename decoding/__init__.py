"""Trie-constrained decoding: every generated SID is a real item (see decoding/recommend.py).

``from decoding import recommend, Catalogue`` works; the import is lazy so ``decoding.trie`` stays importable
with numpy/torch only (no transformers).
"""

_EXPORTS = {"recommend": "decoding.recommend", "recommend_with_generate": "decoding.recommend",
            "Catalogue": "decoding.catalogue"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'decoding' has no attribute {name!r}")
