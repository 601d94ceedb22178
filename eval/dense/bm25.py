"""BM25 (Robertson/Lucene form) over item texts with scipy sparse matrices.

score(q, i) = Σ_t qtf(t) · idf(t) · tf(t, i) (k1 + 1) / (tf(t, i) + k1 (1 − b + b |i| / avgdl)),
idf(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5)) (never negative). A query term repeated n times counts n times
(Lucene's behaviour for a query of term clauses). Tokens are lower-cased runs of letters and digits.

The seed's BM25 baseline (000, §4.1.2) queries with the concatenated texts of the user's history, so a query's
term counts are the sum of its history items' counts: Q = H C, with H [B, N] history counts and C [N, V] item
term counts; scores = Q Wᵀ with W [N, V] the per-item BM25 term weights.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
from scipy import sparse

TOKEN = re.compile(r"[^\W_]+")  # letters and digits, any script


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric runs.

    >>> tokenize("Title: Red Stapler; Brand: ACME-3000;")
    ['title', 'red', 'stapler', 'brand', 'acme', '3000']
    """
    return TOKEN.findall(text.lower())


class BM25:
    """BM25 weights of ``docs`` (one text per item). ``scores(history_counts)`` -> [B, N] float64."""

    def __init__(self, docs: Sequence[str], k1: float = 1.2, b: float = 0.75):
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1 (got k1={k1}, b={b})")
        self.vocab: dict[str, int] = {}
        rows, cols = [], []
        for i, doc in enumerate(docs):
            for token in tokenize(doc):
                rows.append(i)
                cols.append(self.vocab.setdefault(token, len(self.vocab)))
        shape = (len(docs), max(len(self.vocab), 1))
        counts = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)  # duplicates are summed
        counts.sum_duplicates()
        self.counts = counts  # [N, V] term counts C
        self.weights = self._weights(counts, k1, b)  # [N, V] W
        self.weights_t = self.weights.T.tocsr()  # [V, N] Wᵀ, row-major for the query product

    @staticmethod
    def _weights(counts: sparse.csr_matrix, k1: float, b: float) -> sparse.csr_matrix:
        n = counts.shape[0]
        df = np.bincount(counts.indices, minlength=counts.shape[1])  # [V] items containing each term
        idf = np.log1p((n - df + 0.5) / (df + 0.5))  # [V]
        length = np.asarray(counts.sum(axis=1)).ravel()  # [N] tokens per item
        norm = k1 * (1 - b + b * length / max(length.mean(), 1e-9))  # [N]
        w = counts.copy()
        tf, row_norm = w.data, np.repeat(norm, np.diff(w.indptr))
        w.data = idf[w.indices] * tf * (k1 + 1) / (tf + row_norm)
        return w

    def scores(self, history_counts: sparse.csr_matrix) -> np.ndarray:
        """history_counts [B, N]: how often each item is in each query's history -> scores [B, N]."""
        query = history_counts @ self.counts  # [B, V] term counts of the concatenated history texts
        return (query @ self.weights_t).toarray()
