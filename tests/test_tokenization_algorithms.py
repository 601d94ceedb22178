"""Unit / property tests of the SID algorithms: RQ-KMeans, balanced assignment, FSQ, collisions, quality metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tokenization import balanced, fsq, quality, rq_kmeans
from tokenization.collisions import add_dedup_level, collision_stats, duplicate_rank, resolve_collisions


def clustered(n: int = 1500, d: int = 16, centers: int = 30, seed: int = 0) -> np.ndarray:
    """Unit-norm points around random centres, float32 [n, d]."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    x = c[rng.integers(0, centers, n)] + 0.4 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    x = clustered()
    books = rq_kmeans.fit_rq_kmeans(x, levels=3, codebook_size=16, seed=0, n_iter=10)
    return x, books, rq_kmeans.encode(books, x)


# ---------------------------------------------------------------- RQ-KMeans

def test_codebook_shapes_and_code_range(fitted):
    x, books, codes = fitted
    assert books.centroids.shape == (3, 16, 16) and books.centroids.dtype == np.float32
    assert codes.shape == (len(x), 3) and codes.min() >= 0 and codes.max() < 16


def test_greedy_level1_code_is_nearest_coarse_centroid(fitted):
    """Beam 1: s¹ = argmin_k ||e − C¹_k||², compared against a brute-force reference."""
    x, books, codes = fitted
    dist = ((x[:, None, :] - books.centroids[0][None, :, :]) ** 2).sum(-1)  # [N, K]
    assert (codes[:, 0] == dist.argmin(1)).all()


def test_encode_matches_slow_reference(fitted):
    x, books, codes = fitted
    for i in range(0, len(x), 97):
        r = x[i].astype(np.float64)
        for level in range(books.levels):
            k = int(np.argmin(((r - books.centroids[level]) ** 2).sum(1)))
            assert codes[i, level] == k
            r = r - books.centroids[level][k]


def test_residual_norm_non_increasing_on_average(fitted):
    x, books, codes = fitted
    errors = rq_kmeans.reconstruction_errors(books, x, codes)
    assert errors[0] == pytest.approx(1.0, abs=1e-5)  # unit-norm inputs
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(errors))
    residual = x - rq_kmeans.reconstruct(books, codes)
    assert np.allclose((residual ** 2).sum(1).mean(), errors[-1], rtol=1e-4)


def test_same_seed_same_codebooks_other_seed_differs():
    x = clustered(600)
    a = rq_kmeans.fit_rq_kmeans(x, 2, 8, seed=3, n_iter=5)
    b = rq_kmeans.fit_rq_kmeans(x, 2, 8, seed=3, n_iter=5)
    c = rq_kmeans.fit_rq_kmeans(x, 2, 8, seed=4, n_iter=5)
    assert np.array_equal(a.centroids, b.centroids) and not np.array_equal(a.centroids, c.centroids)


def test_explicit_sample_size():
    rows = rq_kmeans.sample_row_indices(1000, 300, seed=0)
    assert len(rows) == 300 == len(set(rows.tolist())) and (np.diff(rows) > 0).all()
    assert np.array_equal(rq_kmeans.sample_row_indices(1000, 300, seed=0), rows)
    assert len(rq_kmeans.sample_row_indices(1000, 0, seed=0)) == 1000


def test_kmeans_fewer_points_than_codes_raises():
    with pytest.raises(ValueError, match="fewer|at least"):
        rq_kmeans.kmeans(np.ones((5, 3), dtype=np.float32), k=8, seed=0)


# ---------------------------------------------------------------- balanced

@pytest.mark.parametrize("n, k", [(100, 7), (64, 8), (1000, 256), (9, 9)])
def test_capacity_assignment_sizes_are_floor_or_ceil(n, k):
    scores = np.random.default_rng(n).normal(size=(n, k))
    scores[:, 0] += 5  # everybody prefers cluster 0
    sizes = np.bincount(balanced.assign_with_capacity(scores), minlength=k)
    assert sizes.sum() == n and sizes.min() >= n // k and sizes.max() <= -(-n // k)


def test_balanced_assignment_is_optimal_on_a_small_case():
    """6 points, 3 centroids, 2 per cluster: compare with the exhaustive optimum of Σ ||x_i − c_a(i)||²."""
    x = np.array([[0.0], [0.1], [0.2], [0.3], [5.0], [9.0]], dtype=np.float32)
    c = np.array([[0.0], [5.0], [9.0]], dtype=np.float32)
    got = balanced.balanced_assign(x, c, eps=0.05, sinkhorn_iters=200)
    cost = balanced.squared_distances(x, c)
    best = min(sum(cost[i, a] for i, a in enumerate(p))
               for p in set(itertools.permutations([0, 0, 1, 1, 2, 2])))
    assert np.bincount(got, minlength=3).tolist() == [2, 2, 2]
    assert sum(cost[i, a] for i, a in enumerate(got)) == pytest.approx(best)


def test_balanced_rq_sizes_within_bounds_and_beats_plain_on_gini():
    x = clustered(1000, centers=5)  # few centres: plain k-means piles items on few codes
    books = balanced.fit_balanced_rq_kmeans(x, levels=2, codebook_size=16, seed=0, n_iter=10, balance_iters=2)
    codes = balanced.encode_balanced(books, x)
    for spread in balanced.size_spread(codes, 16):
        assert 1000 // 16 <= spread["min"] <= spread["max"] <= -(-1000 // 16)
    plain = rq_kmeans.encode(rq_kmeans.fit_rq_kmeans(x, 2, 16, 0, 10), x)
    assert quality.gini(np.bincount(codes[:, 0])) < quality.gini(np.bincount(plain[:, 0], minlength=16))


# ---------------------------------------------------------------- FSQ

def test_fsq_quantize_values_and_straight_through_gradient():
    z = torch.tensor([[-10.0, 0.0, 0.3, 10.0]], requires_grad=True)
    levels = torch.tensor([5.0, 5.0, 5.0, 5.0])
    q = fsq.fsq_quantize(z, levels)
    assert q.tolist() == [[0.0, 2.0, 2.0, 4.0]]  # round(4·σ(z)): σ(0.3)=0.574 -> 2.30 -> 2
    q.sum().backward()
    s = torch.sigmoid(z.detach())
    assert torch.allclose(z.grad, 4 * s * (1 - s))  # identity through round, derivative of (L−1)σ(z)


def test_fsq_codes_in_range_and_encoder_learns():
    x = clustered(800, d=16)
    net = fsq.FSQAutoencoder(16, [4, 4, 3, 3], hidden=32)
    loss = ((net(torch.from_numpy(x)) - torch.from_numpy(x)) ** 2).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.encoder.parameters())
    model = fsq.fit_fsq(x, [4, 4, 3, 3], group_size=2, seed=0, hidden=32, epochs=3)
    assert model.codebook_sizes == [16, 9]
    codes = fsq.encode_fsq(model, x)
    assert codes.shape == (800, 2) and codes.min() >= 0 and (codes.max(0) < [16, 9]).all()
    errors = fsq.fsq_reconstruction_errors(model, x, codes)
    assert len(errors) == 3 and errors[-1] < errors[0]


def test_fsq_mixed_radix_round_trip():
    levels = [4, 3, 5, 2]
    values = np.array([[3, 2, 4, 1], [0, 0, 0, 0], [1, 2, 3, 0]])
    codes = fsq.values_to_codes(values, levels, group_size=2)
    assert codes.tolist() == [[3 + 2 * 4, 4 + 1 * 5], [0, 0], [1 + 2 * 4, 3]]
    assert (fsq.codes_to_values(codes, levels, 2) == values).all()


def test_fsq_bad_layout():
    with pytest.raises(ValueError, match="divide"):
        fsq.fit_fsq(clustered(50), [4, 4, 4], group_size=2)
    with pytest.raises(ValueError, match=">= 2"):
        fsq.fit_fsq(clustered(50), [1, 4], group_size=1)


# ---------------------------------------------------------------- collisions

def test_dedup_level_by_hand():
    codes = np.array([[1, 2], [3, 4], [1, 2], [1, 2], [3, 4], [5, 6]])
    assert duplicate_rank(codes).tolist() == [0, 0, 1, 2, 1, 0]
    assert add_dedup_level(codes)[:, -1].tolist() == [0, 0, 1, 2, 1, 0]
    assert collision_stats(codes) == {"n_items": 6, "n_unique": 3, "collision_rate": 0.5, "colliding_items": 5,
                                      "max_group": 3}


def test_reassign_moves_to_nearest_free_code():
    codes = np.array([[0, 1], [0, 1], [0, 2], [1, 1]])
    cost = np.array([[0.0, 0.5, 0.1, 0.9]] * 4)  # row 1 prefers 0, then 2 (taken), then 1 (taken), then 3
    out = resolve_collisions(codes, "reassign", codebook_size=4, last_level_cost=lambda rows: cost[rows])
    assert out.tolist() == [[0, 1], [0, 0], [0, 2], [1, 1]]


def test_reassign_without_room_and_none_with_collisions_raise():
    codes = np.array([[0, 0], [0, 1], [0, 1]])
    with pytest.raises(ValueError, match="prefix"):
        resolve_collisions(codes, "reassign", 2, lambda rows: np.zeros((len(rows), 2)))
    with pytest.raises(ValueError, match="share a SID"):
        resolve_collisions(codes, "none")


def test_collisions_fully_resolved_on_random_codes():
    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.integers(0, 3, size=(60, 2)), rng.integers(0, 2, size=(60, 1))], axis=1)
    assert collision_stats(codes)["collision_rate"] > 0.5  # 18 distinct SIDs at most
    for method in ("dedup_level", "reassign"):
        out = resolve_collisions(codes, method, 16, lambda rows: rng.random((len(rows), 16)))
        assert collision_stats(out)["collision_rate"] == 0.0
        assert (out[:, :2] == codes[:, :2]).all()  # prefixes never change


# ---------------------------------------------------------------- quality

def test_gini_and_entropy_by_hand():
    assert quality.gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert quality.gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)  # (n − 1) / n
    assert quality.entropy_bits(np.array([1, 1, 1, 1])) == pytest.approx(2.0)
    assert quality.entropy_bits(np.array([3, 0])) == 0.0


def test_level_usage_and_hourglass_share():
    codes = np.array([[0, 0], [0, 1], [0, 2], [1, 3]])
    usage = quality.level_usage(codes, [4, 4], top_k=1)
    assert usage[0]["utilization"] == 0.5 and usage[0]["top_k_share"] == 0.75
    assert usage[1]["utilization"] == 1.0 and usage[1]["entropy"] == pytest.approx(2.0)
    assert usage[0]["top_k_share_uniform"] == 0.25


def test_prefix_pairs_share_prefix_and_differ():
    codes = np.random.default_rng(0).integers(0, 5, size=(300, 3))
    groups = quality.prefix_groups(codes, 2)
    pairs = quality.sample_prefix_pairs(groups, 1000, np.random.default_rng(1))
    assert len(pairs) == 1000 and (pairs[:, 0] != pairs[:, 1]).all()
    assert (codes[pairs[:, 0], :2] == codes[pairs[:, 1], :2]).all()


def test_neighbour_consistency_detects_structure(fitted):
    x, _, codes = fitted
    users = [frozenset({f"u{c}"}) for c in codes[:, 0]]  # users buy within one level-1 cluster
    out = quality.neighbour_consistency(codes, x, users, n_pairs=500)
    row = out["prefix_1"]
    assert row["cosine_same_prefix"] > row["cosine_random"] + 0.2
    assert row["cooccur_same_prefix"] == 1.0 > row["cooccur_random"]
