"""Residual-quantisation k-means (RQ-KMeans): L levels of K centroids, one faiss k-means per level on residuals.

With r¹ = e, level l learns centroids C^l on r^l, assigns s^l = argmin_k ||r^l − C^l_k||² and passes on
r^{l+1} = r^l − C^l_{s^l}. Encoding is greedy (beam 1), so an item's level-1 code is always its nearest level-1
centroid — the property that makes a SID prefix mean "coarse neighbourhood" (faiss' own ResidualQuantizer uses beam 5
by default, which changes ~35% of codes).

Sampling is explicit: ``sample_size`` rows drawn once with ``seed`` train every level, and faiss'
``max_points_per_centroid`` is raised so faiss never subsamples again behind our back.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(2000, 16)).astype("float32")
>>> books = fit_rq_kmeans(x, levels=2, codebook_size=8, seed=0)
>>> encode(books, x).shape
(2000, 2)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)

ENCODE_CHUNK = 65536  # rows per distance block: 65536 x 256 float32 = 64 MiB


@dataclass
class Codebooks:
    """Centroids of every level: ``centroids`` float32 ``[levels, K, d]``."""

    centroids: np.ndarray

    @property
    def levels(self) -> int:
        return self.centroids.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.centroids.shape[1]

    @property
    def dim(self) -> int:
        return self.centroids.shape[2]


def sample_row_indices(n: int, sample_size: int | None, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded sample without replacement (all rows when ``sample_size`` is None/0/≥ n)."""
    if not sample_size or sample_size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))


def kmeans(x: np.ndarray, k: int, seed: int, n_iter: int = 20) -> np.ndarray:
    """faiss k-means on all of ``x`` [n, d] (no hidden subsampling). Returns centroids float32 [k, d]."""
    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means needs at least as many points as codes: {n} points < {k} codes")
    km = faiss.Kmeans(
        d, k, niter=n_iter, seed=seed, verbose=False,
        max_points_per_centroid=math.ceil(n / k) + 1,  # > n/k: faiss keeps every point we pass
        min_points_per_centroid=1,  # small catalogues (e.g. 3.7k items, 256 codes) are fine, don't warn
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids.copy()


def nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = ENCODE_CHUNK) -> np.ndarray:
    """Index of the nearest centroid (squared L2) for each row: x [n, d], centroids [k, d] -> int64 [n].

    ||x − c||² = ||x||² − 2 x·c + ||c||²; ||x||² is constant per row, so argmin(||c||² − 2 x·c).
    """
    c_sq = (centroids.astype(np.float32) ** 2).sum(1)  # [k]
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        out[start:start + chunk] = np.argmin(c_sq[None, :] - 2.0 * (block @ centroids.T), axis=1)
    return out


def fit_rq_kmeans(
    embeddings: np.ndarray,
    levels: int = 3,
    codebook_size: int = 256,
    seed: int = 0,
    n_iter: int = 20,
    sample_size: int | None = None,
) -> Codebooks:
    """Fit ``levels`` k-means codebooks of ``codebook_size`` centroids on residuals.

    embeddings float32 [N, d]; ``sample_size`` rows (seeded, default all) train every level. Level l uses seed
    ``seed + l`` so levels do not share k-means initialisations.
    """
    x = np.ascontiguousarray(embeddings[sample_row_indices(len(embeddings), sample_size, seed)], dtype=np.float32)
    books = []
    for level in range(levels):
        centroids = kmeans(x, codebook_size, seed=seed + level, n_iter=n_iter)  # [K, d]
        x = x - centroids[nearest(x, centroids)]  # greedy residual for the next level
        books.append(centroids)
        log.info("rq-kmeans level %d/%d: mean residual norm %.4f", level + 1, levels, np.linalg.norm(x, axis=1).mean())
    return Codebooks(np.stack(books))


def encode(codebooks: Codebooks, embeddings: np.ndarray) -> np.ndarray:
    """Greedy (beam 1) residual encoding: embeddings [N, d] -> codes int64 [N, levels]."""
    residual = np.array(embeddings, dtype=np.float32, copy=True)
    codes = np.empty((len(residual), codebooks.levels), dtype=np.int64)
    for level, centroids in enumerate(codebooks.centroids):
        codes[:, level] = nearest(residual, centroids)
        residual -= centroids[codes[:, level]]
    return codes


def reconstruct(codebooks: Codebooks, codes: np.ndarray, upto: int | None = None) -> np.ndarray:
    """Sum of the centroids of the first ``upto`` levels (default all): codes [N, ≥upto] -> [N, d] float32."""
    upto = codebooks.levels if upto is None else upto
    out = np.zeros((len(codes), codebooks.dim), dtype=np.float32)
    for level in range(upto):
        out += codebooks.centroids[level][codes[:, level]]
    return out


def reconstruction_errors(codebooks: Codebooks, embeddings: np.ndarray, codes: np.ndarray) -> list[float]:
    """Mean squared L2 error ||e − Σ_{l≤L} c^l||² after each cumulative level L = 0..levels (entry 0 = ||e||²)."""
    residual = np.array(embeddings, dtype=np.float32, copy=True)
    errors = [float((residual ** 2).sum(1).mean())]
    for level in range(codebooks.levels):
        residual -= codebooks.centroids[level][codes[:, level]]
        errors.append(float((residual ** 2).sum(1).mean()))
    return errors


def last_level_residuals(codebooks: Codebooks, embeddings: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Residual that the last level quantises: e − Σ_{l<L} c^l, [N, d] (used to reassign collisions)."""
    return np.asarray(embeddings, dtype=np.float32) - reconstruct(codebooks, codes, upto=codebooks.levels - 1)
