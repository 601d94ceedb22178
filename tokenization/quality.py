"""SID quality: codebook use per level, collisions, reconstruction, hourglass and neighbour consistency.

All functions are pure (numpy); :func:`plot_quality` draws the PNG with matplotlib's Agg backend and
:func:`format_summary` renders the one-screen text the CLI prints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = perfectly even, → 1 = all mass on one code).

    G = Σ_i (2i − n − 1)·x_(i) / (n·Σ x) over the ascending-sorted counts x_(1..n).
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float(((2 * np.arange(1, n + 1) - n - 1) * x).sum() / (n * total))


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon entropy (bits) of the code distribution given by ``counts``."""
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0 if p.size else 0.0  # + 0.0: no '-0.0'


def level_usage(codes: np.ndarray, codebook_sizes: Sequence[int], top_k: int = 10) -> list[dict[str, float]]:
    """Per level: utilisation (used / size), entropy and its maximum log2(size), Gini, and the hourglass
    indicator ``top_k_share`` (share of items on the level's top-k codes; uniform use gives k / size)."""
    out = []
    for level, size in enumerate(codebook_sizes):
        counts = np.bincount(codes[:, level], minlength=int(size))
        top = np.sort(counts)[::-1][:top_k].sum() / max(len(codes), 1)
        out.append({
            "codebook_size": int(size),
            "used": int((counts > 0).sum()),
            "utilization": round(float((counts > 0).mean()), 6),
            "entropy": round(entropy_bits(counts), 6),
            "max_entropy": round(math.log2(size), 6) if size > 1 else 0.0,
            "gini": round(gini(counts), 6),
            "top_k_share": round(float(top), 6),
            "top_k_share_uniform": round(min(top_k, size) / size, 6),
            "max_count": int(counts.max()),
        })
    return out


def prefix_groups(codes: np.ndarray, prefix_len: int) -> np.ndarray:
    """Group id of each row's first ``prefix_len`` codes: codes [N, L] -> int64 [N]."""
    _, inverse = np.unique(codes[:, :prefix_len], axis=0, return_inverse=True)
    return inverse.reshape(-1)


def sample_prefix_pairs(groups: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Random pairs (i, j), i ≠ j, sharing a group: pick i among rows whose group has ≥ 2 rows, then j in it.

    Returns int64 [n, 2] (empty when no group has two rows)."""
    order = np.argsort(groups, kind="stable")  # rows grouped, row order inside a group
    sizes = np.bincount(groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.empty(len(groups), dtype=np.int64)
    position[order] = np.arange(len(groups)) - starts[groups[order]]  # row's place inside its group
    eligible = np.flatnonzero(sizes[groups] >= 2)
    if eligible.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    first = rng.choice(eligible, size=n_pairs)
    g = groups[first]
    offset = rng.integers(0, sizes[g] - 1)  # one of the other size − 1 members ...
    offset += offset >= position[first]  # ... skipping i itself
    return np.stack([first, order[starts[g] + offset]], axis=1)


def cooccurrence_rate(pairs: np.ndarray, item_users: Sequence[frozenset]) -> float:
    """Share of pairs whose two items appear in at least one common user's history."""
    if len(pairs) == 0:
        return float("nan")
    return float(np.mean([bool(item_users[i] & item_users[j]) for i, j in pairs]))


def cosine_mean(embeddings: np.ndarray, pairs: np.ndarray) -> float:
    """Mean cosine similarity of the embedding pairs [n, 2] (rows are L2-normalised by the caller's contract)."""
    if len(pairs) == 0:
        return float("nan")
    a, b = embeddings[pairs[:, 0]], embeddings[pairs[:, 1]]
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(((a * b).sum(1) / den).mean())


def neighbour_consistency(
    codes: np.ndarray, embeddings: np.ndarray | None, item_users: Sequence[frozenset] | None,
    prefix_lens: Iterable[int] = (1, 2), n_pairs: int = 5000, seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Do items sharing a SID prefix look alike? Mean cosine and user co-occurrence of same-prefix pairs vs random
    pairs, per prefix length. ``item_users[i]`` = users whose histories contain item i (None: skipped)."""
    rng = np.random.default_rng(seed)
    n = len(codes)
    random_pairs = rng.integers(0, n, size=(n_pairs, 2))
    random_pairs = random_pairs[random_pairs[:, 0] != random_pairs[:, 1]]
    out = {}
    for p in prefix_lens:
        if p > codes.shape[1]:
            continue
        pairs = sample_prefix_pairs(prefix_groups(codes, p), n_pairs, rng)
        row: dict[str, float] = {"pairs": len(pairs)}
        if embeddings is not None:
            row["cosine_same_prefix"] = round(cosine_mean(embeddings, pairs), 6)
            row["cosine_random"] = round(cosine_mean(embeddings, random_pairs), 6)
        if item_users is not None:
            row["cooccur_same_prefix"] = round(cooccurrence_rate(pairs, item_users), 6)
            row["cooccur_random"] = round(cooccurrence_rate(random_pairs, item_users), 6)
        out[f"prefix_{p}"] = row
    return out


def quality_report(
    codes_before: np.ndarray, codes_after: np.ndarray, codebook_sizes: Sequence[int],
    recon_errors: Sequence[float] | None = None, embeddings: np.ndarray | None = None,
    item_users: Sequence[frozenset] | None = None, top_k: int = 10, n_pairs: int = 5000, seed: int = 0,
) -> dict:
    """Everything quality.json holds. ``codes_before`` [N, L] (semantic levels, before collision resolution),
    ``codes_after`` [N, L_total]; ``codebook_sizes`` covers codes_after's levels."""
    from tokenization.collisions import collision_stats

    return {
        "n_items": len(codes_after),
        "levels": level_usage(codes_after, codebook_sizes, top_k=top_k),
        "top_k": top_k,
        "collisions_before": collision_stats(codes_before),
        "collisions_after": collision_stats(codes_after),
        "reconstruction_mse": None if recon_errors is None else [round(float(e), 6) for e in recon_errors],
        "neighbour_consistency": neighbour_consistency(codes_before, embeddings, item_users, n_pairs=n_pairs,
                                                       seed=seed),
    }


def plot_quality(report: dict, path, title: str = "") -> None:
    """Three panels: utilisation and top-k share per level, entropy vs maximum per level, reconstruction MSE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    levels = report["levels"]
    x = np.arange(len(levels))
    axes[0].bar(x - 0.2, [r["utilization"] for r in levels], width=0.4, label="utilisation")
    axes[0].bar(x + 0.2, [r["top_k_share"] for r in levels], width=0.4, label=f"top-{report['top_k']} share")
    axes[0].set(title="codebook use per level", xlabel="level", ylim=(0, 1.05), xticks=x)
    axes[0].legend(fontsize=8)
    x = np.arange(len(levels))
    axes[1].bar(x - 0.2, [r["entropy"] for r in levels], width=0.4, label="entropy")
    axes[1].bar(x + 0.2, [r["max_entropy"] for r in levels], width=0.4, label="max", alpha=0.5)
    axes[1].set(title="token entropy (bits)", xlabel="level", xticks=x)
    axes[1].legend(fontsize=8)
    recon = report.get("reconstruction_mse")
    if recon:
        axes[2].plot(range(len(recon)), recon, marker="o")
    axes[2].set(title="reconstruction MSE vs levels used", xlabel="levels")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def format_summary(report: dict, meta: dict) -> str:
    """One screen of text: method, items, per-level table, collisions, reconstruction, neighbour consistency."""
    before, after = report["collisions_before"], report["collisions_after"]
    lines = [
        (f"SID artifact: {meta['algorithm']}  items={report['n_items']}  levels={meta['levels']} "
         f"(dedup level: {meta['dedup_level']})  codebooks={meta['codebook_sizes']}"),
        f"example: {meta.get('example_sid', '')}",
        f"{'level':>5} {'used':>11} {'util':>6} {'entropy/max':>13} {'gini':>6} {'top-k share (uniform)':>22}",
    ]
    for level, row in enumerate(report["levels"]):
        lines.append(
            f"{level:>5} {row['used']:>5}/{row['codebook_size']:<5} {row['utilization']:>6.3f} "
            f"{row['entropy']:>6.2f}/{row['max_entropy']:<6.2f} {row['gini']:>6.3f} "
            f"{row['top_k_share']:>12.3f} ({row['top_k_share_uniform']:.3f})")
    lines.append(f"collisions before: rate {before['collision_rate']:.4f}, {before['colliding_items']} items, "
                 f"largest group {before['max_group']}  ->  after: rate {after['collision_rate']:.4f}")
    if report.get("reconstruction_mse"):
        lines.append("reconstruction MSE by levels used: " + " ".join(f"{e:.4f}" for e in report["reconstruction_mse"]))
    for name, row in report["neighbour_consistency"].items():
        parts = [f"{name}: {row['pairs']} pairs"]
        if "cosine_same_prefix" in row:
            parts.append(f"cosine {row['cosine_same_prefix']:.3f} vs random {row['cosine_random']:.3f}")
        if "cooccur_same_prefix" in row:
            parts.append(f"co-occur {row['cooccur_same_prefix']:.4f} vs random {row['cooccur_random']:.4f}")
        lines.append("  ".join(parts))
    return "\n".join(lines)
