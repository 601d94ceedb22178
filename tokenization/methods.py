"""One function per SID method: embeddings [N, d] -> :class:`QuantizedCodes` (codes before collision resolution).

Methods: ``rq_kmeans`` (greedy residual k-means), ``balanced_rq_kmeans`` (equal-size clusters per level), ``fsq``
(finite scalar quantisation), ``rqvae_domain`` (GenCDR domain-adaptive RQ-VAE: universal RQ-VAE + one LoRA and
router per domain, :mod:`tokenization.rqvae`) and ``external`` (SIDs read from a MiniOneRec / LC-Rec index.json).
Each returns what the artifact stores and what collision reassignment needs (a last-level cost for given rows).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tokenization import balanced, fsq, rq_kmeans, rqvae
from tokenization.sid_format import read_index_json

log = logging.getLogger(__name__)

METHODS = ("rq_kmeans", "balanced_rq_kmeans", "fsq", "rqvae_domain", "external")
RECON_SAMPLE = 65536  # FSQ / RQ-VAE reconstruction error is measured on at most this many (seeded) items


@dataclass
class QuantizedCodes:
    """codes int64 [N, L]; codebook_sizes [L]; reconstruction MSE after 0..L levels (None when unknown); arrays to
    save under codebooks/; ``last_level_cost(rows) -> [len(rows), K_last]`` for collision reassignment."""

    codes: np.ndarray
    codebook_sizes: list[int]
    recon_errors: list[float] | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    last_level_cost: Callable[[np.ndarray], np.ndarray] | None = None
    info: dict = field(default_factory=dict)


def _residual_cost(books: rq_kmeans.Codebooks, x: np.ndarray, codes: np.ndarray) -> Callable:
    def cost(rows: np.ndarray) -> np.ndarray:  # distance of the last-level residual to every last-level centroid
        residual = rq_kmeans.last_level_residuals(books, x[rows], codes[rows])
        return balanced.squared_distances(residual, books.centroids[-1])
    return cost


def rq_kmeans_codes(
    x: np.ndarray, levels: int, codebook_size: int, seed: int, n_iter: int = 20, sample_size: int | None = None,
) -> QuantizedCodes:
    """Greedy RQ-KMeans (see :mod:`tokenization.rq_kmeans`)."""
    books = rq_kmeans.fit_rq_kmeans(x, levels, codebook_size, seed, n_iter=n_iter, sample_size=sample_size)
    codes = rq_kmeans.encode(books, x)
    return QuantizedCodes(
        codes, [codebook_size] * levels, rq_kmeans.reconstruction_errors(books, x, codes),
        {"centroids": books.centroids}, _residual_cost(books, x, codes))


def balanced_rq_kmeans_codes(
    x: np.ndarray, levels: int, codebook_size: int, seed: int, n_iter: int = 20, sample_size: int | None = None,
    balance_iters: int = 5, eps: float = 0.05, sinkhorn_iters: int = 50,
) -> QuantizedCodes:
    """Balanced RQ-KMeans (see :mod:`tokenization.balanced`); ``info["size_spread"]`` per level."""
    books = balanced.fit_balanced_rq_kmeans(
        x, levels, codebook_size, seed, n_iter, sample_size, balance_iters, eps, sinkhorn_iters)
    codes = balanced.encode_balanced(books, x, eps, sinkhorn_iters)
    return QuantizedCodes(
        codes, [codebook_size] * levels, rq_kmeans.reconstruction_errors(books, x, codes),
        {"centroids": books.centroids}, _residual_cost(books, x, codes),
        {"size_spread": balanced.size_spread(codes, codebook_size)})


def fsq_codes(
    x: np.ndarray, fsq_levels: Sequence[int], group_size: int, seed: int, hidden: int = 256, epochs: int = 20,
    batch_size: int = 512, lr: float = 1.0e-3, sample_size: int | None = None,
) -> QuantizedCodes:
    """FSQ (see :mod:`tokenization.fsq`); one SID position per ``group_size`` FSQ dimensions."""
    model = fsq.fit_fsq(x, fsq_levels, group_size, seed, hidden, epochs, batch_size, lr, sample_size)
    codes = fsq.encode_fsq(model, x)
    sizes = model.codebook_sizes
    last_dims = slice(len(fsq_levels) - group_size, len(fsq_levels))
    code_values = fsq.codes_to_values(
        np.arange(sizes[-1])[:, None], fsq_levels[last_dims], group_size).astype(np.float32)  # [K, g]

    @torch.no_grad()
    def cost(rows: np.ndarray) -> np.ndarray:  # distance of the un-rounded last-group values to each code's values
        z = model.net.encoder(torch.from_numpy(np.ascontiguousarray(x[rows], dtype=np.float32)))
        scaled = ((model.net.levels - 1) * torch.sigmoid(z)).numpy()[:, last_dims]  # [M, g]
        return ((scaled[:, None, :] - code_values[None, :, :]) ** 2).sum(-1)

    arrays = {f"fsq.{k}": v for k, v in model.state_arrays().items()}
    rows = rq_kmeans.sample_row_indices(len(x), RECON_SAMPLE, seed)  # decoding 1M items 4 times costs minutes
    errors = fsq.fsq_reconstruction_errors(model, x[rows], codes[rows])
    return QuantizedCodes(codes, sizes, errors, arrays, cost, {"reconstruction_rows": len(rows)})


def rqvae_domain_codes(
    x: np.ndarray, item_domains: Sequence[str], cfg: rqvae.RQVAEConfig, seed: int, sample_size: int | None = None,
) -> QuantizedCodes:
    """Domain-adaptive RQ-VAE (see :mod:`tokenization.rqvae`): every item through its own domain's LoRA + router,
    quantised by the shared frozen codebooks. ``info``: per-stage losses, dead-code resets, router weights."""
    model, info = rqvae.fit_rqvae_domain(x, item_domains, cfg, seed, sample_size)
    domain_index = rqvae.domain_indices(model, item_domains)
    enc = rqvae.encode(model, x, domain_index)

    def cost(rows: np.ndarray) -> np.ndarray:  # last-level residual of the routed latent to every last-level code
        return rqvae.last_level_cost(model, enc.last_residual[rows])

    item_domains = np.asarray(item_domains, dtype=object)
    info["router_weight"] = {  # w: share of the universal latent in the item's latent (1 - w: its domain's LoRA)
        name: {"mean": round(float(enc.weight[item_domains == name].mean()), 6),
               "std": round(float(enc.weight[item_domains == name].std()), 6),
               "min": round(float(enc.weight[item_domains == name].min()), 6),
               "max": round(float(enc.weight[item_domains == name].max()), 6)} for name in model.domains}
    info["codes_differ_from_universal"] = {  # share of items whose SID the LoRA + router changed, per level / any
        "per_level": [round(float(v), 6) for v in (enc.codes != enc.universal_codes).mean(0)],
        "any": round(float((enc.codes != enc.universal_codes).any(1).mean()), 6)}
    rows = rq_kmeans.sample_row_indices(len(x), RECON_SAMPLE, seed)
    info["reconstruction_rows"] = len(rows)
    errors = rqvae.reconstruction_errors(model, x[rows], enc.codes[rows])
    arrays = {f"rqvae.{k}": v for k, v in rqvae.state_arrays(model).items()}
    return QuantizedCodes(enc.codes, [cfg.codebook_size] * cfg.levels, errors, arrays, cost, info)


def external_codes(
    index_paths: Sequence[str], id_prefixes: Sequence[str], item_ids: Sequence[str], codebook_size: int = 0,
) -> QuantizedCodes:
    """SIDs from MiniOneRec / LC-Rec index.json files, aligned to ``item_ids``.

    ``id_prefixes[i]`` is prepended to the keys of ``index_paths[i]`` (e.g. ``"Office_Products:"`` for a merged
    dataset). Every item needs a SID; index entries for items outside ``item_ids`` are ignored (logged).
    ``codebook_size`` 0 infers each level's size as max code + 1.
    """
    if len(id_prefixes) not in (0, len(index_paths)):
        raise ValueError(f"{len(index_paths)} index files but {len(id_prefixes)} id prefixes; give one per file")
    found: dict[str, np.ndarray] = {}
    for i, path in enumerate(index_paths):
        ids, codes = read_index_json(path, id_prefix=id_prefixes[i] if id_prefixes else "")
        if found and codes.shape[1] != next(iter(found.values())).shape[0]:
            raise ValueError(f"{path}: {codes.shape[1]} levels, the other index files have a different number; every "
                             f"SID must have the same number of levels (README, Collisions and SID length)")
        found.update(zip(ids, codes))
    missing = [item_id for item_id in item_ids if item_id not in found]
    if missing:
        raise ValueError(f"{len(missing)} items have no SID in {list(index_paths)}, e.g. {missing[:3]} "
                         f"(set external_id_prefixes to match the dataset's ids)")
    log.info("external SIDs: %d index entries not in the dataset ignored", len(found) - len(item_ids))
    codes = np.stack([found[item_id] for item_id in item_ids])
    sizes = [max(int(codebook_size), int(codes[:, level].max()) + 1) for level in range(codes.shape[1])]

    def cost(rows: np.ndarray) -> np.ndarray:  # no geometry known: nearest code number
        return np.abs(np.arange(sizes[-1])[None, :] - codes[rows, -1:]).astype(np.float32)

    return QuantizedCodes(codes, sizes, None, {}, cost)
