"""Balanced RQ-KMeans: every level assigns items to codes in equal-size clusters.

Plain k-means lets a few centroids absorb most items (codebook collapse, the "hourglass" in the middle level).
Here each level's assignment is an optimal-transport problem with uniform marginals (every code gets n/K items):

1. Sinkhorn (entropic OT) on the normalised cost ``C_ik = ||x_i − c_k||²`` gives column scalings ``v_k``: a
   code's "price". ``score_ik = −C_ik + eps·log v_k`` is eps × the log transport plan up to a row constant.
2. Hard rounding with capacities: every cluster takes at most ``n // K`` items (highest score first; rejected items
   propose to their next best cluster with room), then the ``n % K`` left-over items one extra each — so cluster
   sizes are exactly ``n // K`` or ``n // K + 1``.

Centroids are refined by alternating balanced assignment and mean update (size-constrained k-means), starting
from faiss k-means. Encoding with balanced assignment is *not* greedy: an item's code need not be its nearest
centroid (that is the price of uniform codebook use).
"""

from __future__ import annotations

import logging

import numpy as np

from tokenization.rq_kmeans import Codebooks, kmeans, sample_row_indices

log = logging.getLogger(__name__)


def squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """||x_i − c_k||², x [n, d], centroids [k, d] -> float32 [n, k] (clipped at 0 against rounding)."""
    d = np.asarray(x, dtype=np.float32) @ centroids.astype(np.float32).T  # [n, k]; in place below (1M x 256 = 1 GiB)
    d *= -2.0
    d += (x.astype(np.float32) ** 2).sum(1, keepdims=True)
    d += (centroids.astype(np.float32) ** 2).sum(1)[None, :]
    return np.maximum(d, 0.0, out=d)


def sinkhorn_potentials(cost: np.ndarray, eps: float = 0.05, n_iter: int = 50, tol: float = 1.0e-3) -> np.ndarray:
    """Log column scalings ``log v`` [k] of entropic OT between n points (mass 1/n) and k codes (mass 1/k).

    cost [n, k] normalised so each row's minimum is 0 and the mean is 1; the plan is P = diag(u) K diag(v) with
    K = exp(−C/eps). float64 keeps K's small entries (down to exp(−745)) and the scalings finite.
    """
    kernel = cost.astype(np.float64)  # [n, k]; built in place: 1M x 256 float64 = 2 GiB
    kernel *= -1.0 / eps
    np.exp(kernel, out=kernel)  # every row holds a 1 (its minimum)
    n, k = kernel.shape
    u, v = np.full(n, 1.0 / n), np.ones(k)
    for it in range(n_iter):
        kv = kernel @ v  # [n]
        if it and np.abs(u * kv * n - 1.0).max() < tol:  # row marginals still hold after the last v update
            break
        u = (1.0 / n) / kv  # row marginals exact
        v = (1.0 / k) / (u @ kernel)  # [k]; column marginals exact
    if not np.isfinite(v).all() or (v <= 0).any():
        raise ValueError(f"Sinkhorn diverged (eps={eps}); raise eps")
    return np.log(v)


def assign_with_capacity(scores: np.ndarray) -> np.ndarray:
    """Hard assignment maximising ``scores`` [n, k] with cluster sizes exactly n//k or n//k + 1 -> int64 [n].

    Rounds of proposals: every unassigned row proposes to its best cluster with room; a cluster keeps the
    highest-scoring proposals up to its free capacity. Capacity is n//k until all clusters are full, then +1.
    """
    n, k = scores.shape
    if n < k:
        raise ValueError(f"balanced assignment needs at least as many points as codes: {n} < {k}")
    assignment = np.full(n, -1, dtype=np.int64)
    counts, capacity = np.zeros(k, dtype=np.int64), np.full(k, n // k, dtype=np.int64)
    pending = np.arange(n)
    while pending.size:
        free = capacity - counts
        if not (free > 0).any():
            capacity += 1  # only the n % k left-over rows remain; each cluster may take one more
            continue
        s = scores[pending]  # fancy indexing copies
        s[:, free <= 0] = -np.inf
        choice = s.argmax(1)
        best = s[np.arange(len(pending)), choice]
        order = np.lexsort((-best, choice))  # by cluster, best score first
        chosen = choice[order]
        first = np.searchsorted(chosen, chosen, side="left")
        accept = (np.arange(len(order)) - first) < free[chosen]
        assignment[pending[order[accept]]] = chosen[accept]
        counts += np.bincount(chosen[accept], minlength=k)
        pending = np.sort(pending[order[~accept]])
    return assignment


def balanced_assign(x: np.ndarray, centroids: np.ndarray, eps: float = 0.05, sinkhorn_iters: int = 50) -> np.ndarray:
    """Equal-size assignment of rows x [n, d] to centroids [k, d] -> int64 [n] (sizes n//k or n//k + 1)."""
    cost = squared_distances(x, centroids)  # [n, k]
    cost -= cost.min(1, keepdims=True)  # a row constant does not change the plan
    cost /= max(float(cost.mean()), 1e-12)
    log_v = sinkhorn_potentials(cost, eps=eps, n_iter=sinkhorn_iters)
    cost *= -1.0  # reuse the buffer: scores = −C + eps·log v
    cost += eps * log_v[None, :].astype(np.float32)
    return assign_with_capacity(cost)


def cluster_means(x: np.ndarray, assignment: np.ndarray, k: int) -> np.ndarray:
    """Mean of the rows of each cluster: x [n, d], assignment [n] -> [k, d] (clusters are non-empty here)."""
    order = np.argsort(assignment, kind="stable")
    starts = np.searchsorted(assignment[order], np.arange(k))
    sums = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
    return (sums / np.bincount(assignment, minlength=k)[:, None]).astype(np.float32)


def fit_balanced_kmeans(
    x: np.ndarray, k: int, seed: int, n_iter: int = 20, balance_iters: int = 5, eps: float = 0.05,
    sinkhorn_iters: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Size-constrained k-means on x [n, d]: faiss init, then ``balance_iters`` rounds of balanced assignment and
    mean update. Returns ``(centroids [k, d], assignment [n])``."""
    centroids = kmeans(x, k, seed=seed, n_iter=n_iter)
    assignment = balanced_assign(x, centroids, eps, sinkhorn_iters)
    for _ in range(balance_iters):
        centroids = cluster_means(x, assignment, k)
        assignment = balanced_assign(x, centroids, eps, sinkhorn_iters)
    return centroids, assignment


def fit_balanced_rq_kmeans(
    embeddings: np.ndarray, levels: int = 3, codebook_size: int = 256, seed: int = 0, n_iter: int = 20,
    sample_size: int | None = None, balance_iters: int = 5, eps: float = 0.05, sinkhorn_iters: int = 50,
) -> Codebooks:
    """Balanced RQ-KMeans codebooks: embeddings [N, d] -> Codebooks [levels, K, d] (level l uses seed + l)."""
    x = np.ascontiguousarray(embeddings[sample_row_indices(len(embeddings), sample_size, seed)], dtype=np.float32)
    books = []
    for level in range(levels):
        centroids, assignment = fit_balanced_kmeans(
            x, codebook_size, seed + level, n_iter, balance_iters, eps, sinkhorn_iters)
        x = x - centroids[assignment]
        books.append(centroids)
        log.info("balanced rq-kmeans level %d/%d: mean residual norm %.4f", level + 1, levels,
                 np.linalg.norm(x, axis=1).mean())
    return Codebooks(np.stack(books))


def encode_balanced(
    codebooks: Codebooks, embeddings: np.ndarray, eps: float = 0.05, sinkhorn_iters: int = 50
) -> np.ndarray:
    """Balanced residual encoding of a whole catalogue: embeddings [N, d] -> codes int64 [N, levels]."""
    residual = np.array(embeddings, dtype=np.float32, copy=True)
    codes = np.empty((len(residual), codebooks.levels), dtype=np.int64)
    for level, centroids in enumerate(codebooks.centroids):
        codes[:, level] = balanced_assign(residual, centroids, eps, sinkhorn_iters)
        residual -= centroids[codes[:, level]]
    return codes


def size_spread(codes: np.ndarray, codebook_size: int) -> list[dict[str, float]]:
    """Per level: min / max / std of cluster sizes over all ``codebook_size`` codes."""
    out = []
    for level in range(codes.shape[1]):
        sizes = np.bincount(codes[:, level], minlength=codebook_size)
        out.append({"min": int(sizes.min()), "max": int(sizes.max()), "std": round(float(sizes.std()), 4)})
    return out
