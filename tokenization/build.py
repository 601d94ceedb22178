"""Build the SID artifact: item embeddings -> semantic IDs -> collisions resolved -> quality report -> artifact dir.

    python -m tokenization.build --config configs/tokenization/amazon18_rqkmeans.yaml [--seed 1 ...]

Reads a dataset (``data_builders.dataset``) and its embeddings (``data_builders.embeddings``), writes
``output_dir`` (see :mod:`tokenization.artifact`) and prints a one-screen quality summary.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from data_builders.cli import (check, check_choice, check_output_dir, check_range, check_seed, parse_config,
                               read_json_file, require_dir, run_cli, user_error)
from data_builders.dataset import library_versions
from tokenization import methods, rqvae
from tokenization.artifact import write_sid_artifact
from tokenization.collisions import COLLISION_METHODS, NOT_OFFERED, resolve_collisions
from tokenization.inputs import BuildInputs, item_users, load_build_inputs
from tokenization.quality import format_summary, quality_report
from tokenization.sid_format import LEVEL_LETTERS, TOKEN_FORMAT, sid_string

log = logging.getLogger("tokenization.build")
VOCAB_INITS = ("semantic", "mean")
ITEM_SUBSETS = {"all": (), "before_test": ("train", "valid"), "before_valid": ("train",)}


@dataclass
class BuildArgs:
    """Every setting of a SID build (flat YAML keys, overridable on the command line)."""

    dataset: str = "artifacts/amazon18/dataset"
    embeddings: str = "artifacts/amazon18/embeddings"  # "" only for method=external (no geometry-based quality)
    output_dir: str = "artifacts/amazon18/sids"
    method: str = "rq_kmeans"  # rq_kmeans | balanced_rq_kmeans | fsq | rqvae_domain | external
    domains: list[str] = field(default_factory=list)  # empty = every item of the dataset
    # all | before_test: only items of some train / valid row, so the items first seen in the test period are new
    # to the SIDs too (cold-start protocol; add them later with python -m tokenization.add_items) | before_valid:
    # only items of train rows (the same protocol one period earlier, for choices made on valid)
    items: str = "all"
    seed: int = 0
    levels: int = 3  # semantic levels (RQ); the de-duplication level comes on top
    codebook_size: int = 256  # method=external: at least this many tokens per level (more if codes need it)
    kmeans_iters: int = 20  # also the k-means initialisation of the rqvae_domain codebooks
    sample_size: int = 0  # rows that train each level / the FSQ or RQ-VAE net; 0 = all items
    balance_iters: int = 5  # balanced: rounds of (equal-size assignment, mean update) after k-means
    sinkhorn_eps: float = 5.0e-2  # balanced: entropic regularisation, relative to the mean distance
    sinkhorn_iters: int = 50
    fsq_levels: list[int] = field(default_factory=lambda: [16, 16, 16, 16, 16, 16])
    fsq_group_size: int = 2  # FSQ dimensions per SID position: 2 x 16 levels = 256 tokens per position
    fsq_hidden: int = 256  # 0 = linear projection
    fsq_epochs: int = 20
    fsq_batch_size: int = 512
    fsq_lr: float = 1.0e-3
    # rqvae_domain (GenCDR, tokenization/rqvae.py): universal RQ-VAE (levels x codebook_size codes) -> one LoRA per
    # domain on its encoder -> an item-level router per domain mixing the universal and the domain latent
    rqvae_hidden: int = 256  # encoder / decoder / masked-code context model width
    rqvae_latent: int = 64  # dimension of the quantised latent
    rqvae_beta: float = 0.25  # commitment weight β
    rqvae_mtm_weight: float = 0.1  # λ of the masked code modelling loss; 0 = off (needs levels >= 2)
    rqvae_mtm_mask_prob: float = 0.5  # share of SID positions masked per item (>= 1 masked, >= 1 visible)
    # L_MTM also into the encoder (straight-through inputs); off: it reaches the codebooks only (on amazon18 the
    # encoder path collapsed level 1: Gini 0.75 vs 0.32, reconstruction 0.53 vs 0.42 at 50 epochs; rqvae.py)
    rqvae_mtm_encoder_grad: bool = False
    rqvae_epochs: int = 100  # stage 1 (universal RQ-VAE; the paper: 100)
    rqvae_batch_size: int = 512  # every stage
    rqvae_lr: float = 1.0e-3  # Adam, every stage
    rqvae_lora_rank: int = 8
    rqvae_lora_alpha: float = 16.0  # LoRA output scaled by alpha / rank
    rqvae_lora_epochs: int = 20  # stage 2, per domain
    rqvae_router_hidden: int = 128
    rqvae_router_latent: int = 16  # VIB latent of the router
    rqvae_router_epochs: int = 20  # stage 3, per domain
    rqvae_vib_weight: float = 1.0e-3  # weight of KL(q(s|x) || N(0, I))
    external_index: list[str] = field(default_factory=list)  # method=external: MiniOneRec/LC-Rec index.json files
    external_id_prefixes: list[str] = field(default_factory=list)  # one per file, e.g. "Office_Products:"
    # dedup_level: TIGER extra level on *every* item (+1 token each, even if 0.4% collide) | reassign: nearest free
    # last-level code, length kept | none: fail on any collision. Mixed lengths are not offered (README).
    collision: str = "dedup_level"
    vocab_init: str = "semantic"  # default init of the SID embedding rows (tokenization.vocab), recorded in meta
    quality_top_k: int = 10  # hourglass indicator: share of items on each level's top-k codes
    quality_pairs: int = 5000  # pairs sampled for neighbour consistency


MAX_LEVELS = 8  # semantic levels: SIDs longer than this cost decoding steps without a measured gain
MAX_CODEBOOK = 1 << 16  # tokens per level


def check_args(args: BuildArgs) -> None:
    """Every setting checked before any input loads (ranges that would run for hours or crash faiss included)."""
    check_choice("method", args.method, methods.METHODS)
    check(args.collision not in NOT_OFFERED, "`collision`", f"{args.collision!r} is not offered: "
          f"{NOT_OFFERED.get(args.collision)}")
    check_choice("collision", args.collision, COLLISION_METHODS)
    check_choice("vocab_init", args.vocab_init, VOCAB_INITS)
    check_choice("items", args.items, ITEM_SUBSETS)
    check(args.method == "external" or args.embeddings, "embeddings",
          f"method={args.method} needs embeddings (a directory from data_builders.build)")
    check(args.method != "external" or args.external_index, "external_index",
          "method=external needs one or more index.json files")
    check_seed("seed", args.seed)
    check_range("levels", args.levels, 1, MAX_LEVELS)
    check_range("codebook_size", args.codebook_size, 2, MAX_CODEBOOK)
    check_range("kmeans_iters", args.kmeans_iters, 1, 10_000)
    check_range("sample_size", args.sample_size, 0)
    check_range("balance_iters", args.balance_iters, 0, 10_000)
    check_range("sinkhorn_eps", args.sinkhorn_eps, 0, lo_open=True)
    check_range("sinkhorn_iters", args.sinkhorn_iters, 1, 100_000)
    check(args.fsq_levels and all(2 <= v <= 1024 for v in args.fsq_levels), "fsq_levels",
          f"every entry must be in [2, 1024], got {args.fsq_levels}")
    check_range("fsq_group_size", args.fsq_group_size, 1, len(args.fsq_levels) or 1)
    check(len(args.fsq_levels) % args.fsq_group_size == 0, "fsq_group_size",
          f"{args.fsq_group_size} must divide len(fsq_levels) = {len(args.fsq_levels)}")
    check_range("fsq_hidden", args.fsq_hidden, 0)
    check_range("fsq_epochs", args.fsq_epochs, 1)
    check_range("fsq_batch_size", args.fsq_batch_size, 1)
    check_range("fsq_lr", args.fsq_lr, 0, lo_open=True)
    if args.method == "rqvae_domain":
        check_rqvae_args(args)
    check_range("quality_top_k", args.quality_top_k, 1)
    check_range("quality_pairs", args.quality_pairs, 0)
    if args.external_id_prefixes:
        check(len(args.external_id_prefixes) == len(args.external_index), "external_id_prefixes",
              f"{len(args.external_id_prefixes)} prefixes for {len(args.external_index)} external_index files")


def check_rqvae_args(args: BuildArgs) -> None:
    """method=rqvae_domain settings (checked only for that method)."""
    check_range("rqvae_hidden", args.rqvae_hidden, 1, 1 << 16)
    check_range("rqvae_latent", args.rqvae_latent, 1, 1 << 14)
    check_range("rqvae_beta", args.rqvae_beta, 0, lo_open=True)
    check_range("rqvae_mtm_weight", args.rqvae_mtm_weight, 0)
    check(args.rqvae_mtm_weight == 0 or args.levels >= 2, "rqvae_mtm_weight",
          f"masked code modelling predicts masked SID positions from visible ones and needs levels >= 2, got levels "
          f"{args.levels}; set rqvae_mtm_weight: 0")
    check_range("rqvae_mtm_mask_prob", args.rqvae_mtm_mask_prob, 0, 1, lo_open=True, hi_open=True)
    check_range("rqvae_epochs", args.rqvae_epochs, 1, 10_000)
    check_range("rqvae_batch_size", args.rqvae_batch_size, 1)
    check_range("rqvae_lr", args.rqvae_lr, 0, lo_open=True)
    check_range("rqvae_lora_rank", args.rqvae_lora_rank, 1, min(args.rqvae_hidden, args.rqvae_latent))
    check_range("rqvae_lora_alpha", args.rqvae_lora_alpha, 0, lo_open=True)
    check_range("rqvae_lora_epochs", args.rqvae_lora_epochs, 1, 10_000)
    check_range("rqvae_router_hidden", args.rqvae_router_hidden, 1, 1 << 16)
    check_range("rqvae_router_latent", args.rqvae_router_latent, 1, 1 << 14)
    check_range("rqvae_router_epochs", args.rqvae_router_epochs, 1, 10_000)
    check_range("rqvae_vib_weight", args.rqvae_vib_weight, 0)
    check(args.sample_size == 0 or args.sample_size >= args.codebook_size, "sample_size",
          f"{args.sample_size} rows cannot initialise {args.codebook_size} codes by k-means; use 0 (all items) or "
          f">= codebook_size")


def rqvae_config(args: BuildArgs) -> rqvae.RQVAEConfig:
    return rqvae.RQVAEConfig(
        levels=args.levels, codebook_size=args.codebook_size, hidden=args.rqvae_hidden, latent=args.rqvae_latent,
        beta=args.rqvae_beta, mtm_weight=args.rqvae_mtm_weight, mtm_mask_prob=args.rqvae_mtm_mask_prob,
        mtm_encoder_grad=args.rqvae_mtm_encoder_grad,
        epochs=args.rqvae_epochs, batch_size=args.rqvae_batch_size, lr=args.rqvae_lr, kmeans_iters=args.kmeans_iters,
        lora_rank=args.rqvae_lora_rank, lora_alpha=args.rqvae_lora_alpha, lora_epochs=args.rqvae_lora_epochs,
        router_hidden=args.rqvae_router_hidden, router_latent=args.rqvae_router_latent,
        router_epochs=args.rqvae_router_epochs, vib_weight=args.rqvae_vib_weight)


def check_inputs(args: BuildArgs) -> None:
    """Input directories and files exist (their contents are validated as they load); the output is not a file."""
    require_dir(args.dataset, "dataset", containing="meta.json")
    if args.embeddings:
        require_dir(args.embeddings, "embeddings", containing="meta.json")
    for f in args.external_index if args.method == "external" else []:
        read_json_file(f, "external index")
    check_output_dir(args.output_dir)


def compute_codes(args: BuildArgs, inputs: BuildInputs) -> methods.QuantizedCodes:
    x, sample = inputs.embeddings, args.sample_size or None
    if args.method == "rq_kmeans":
        return methods.rq_kmeans_codes(x, args.levels, args.codebook_size, args.seed, args.kmeans_iters, sample)
    if args.method == "balanced_rq_kmeans":
        return methods.balanced_rq_kmeans_codes(
            x, args.levels, args.codebook_size, args.seed, args.kmeans_iters, sample, args.balance_iters,
            args.sinkhorn_eps, args.sinkhorn_iters)
    if args.method == "fsq":
        return methods.fsq_codes(x, args.fsq_levels, args.fsq_group_size, args.seed, args.fsq_hidden,
                                 args.fsq_epochs, args.fsq_batch_size, args.fsq_lr, sample)
    if args.method == "rqvae_domain":
        domains = [str(d) for d in np.asarray(inputs.dataset.items["domain"], dtype=object)[inputs.rows]]
        return methods.rqvae_domain_codes(x, domains, rqvae_config(args), args.seed, sample)
    try:
        return methods.external_codes(args.external_index, args.external_id_prefixes, inputs.item_ids,
                                      args.codebook_size)
    except ValueError as e:  # a bad index file (mixed SID lengths, missing items) is the user's to fix
        raise user_error("external_index", str(e)) from None


def build_meta(args: BuildArgs, inputs: BuildInputs, q: methods.QuantizedCodes, codes, argv: list[str]) -> dict:
    dedup = args.collision == "dedup_level"
    sizes = q.codebook_sizes + ([int(codes[:, -1].max()) + 1] if dedup else [])
    return {
        "algorithm": args.method,
        "levels": int(codes.shape[1]),  # including the de-duplication level
        "semantic_levels": len(q.codebook_sizes),
        "dedup_level": dedup,
        "collision_method": args.collision,
        "codebook_sizes": sizes,
        "token_format": TOKEN_FORMAT,
        "level_letters": LEVEL_LETTERS[: codes.shape[1]],
        "example_sid": sid_string(codes[0]),
        "seed": args.seed,
        "item_subset": args.items,
        "vocab_init": args.vocab_init,
        "method_info": q.info,
        "inputs": {
            "dataset": args.dataset, "dataset_hash": inputs.dataset.dataset_hash, "domains": args.domains,
            "embeddings": args.embeddings or None, "embeddings_sha256": inputs.embeddings_sha256,
            "encoder": inputs.embeddings_meta.get("encoder"), "external_index": args.external_index,
        },
        "config": asdict(args),
        "command": "python -m tokenization.build " + shlex.join(argv),
        "versions": {**library_versions(), "faiss": faiss.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    """The CLI: exit 0, or 2 with one ``error: <where>: <problem>`` line for a user error (data_builders/cli.py)."""
    return run_cli(build, argv)


def build(argv: list[str] | None = None) -> dict:
    """Run the build; returns the artifact's meta.json content."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    (args,) = parse_config((BuildArgs,), argv)
    check_args(args)
    check_inputs(args)
    min_items = args.codebook_size if args.method in ("rq_kmeans", "balanced_rq_kmeans", "rqvae_domain") else 1
    inputs = load_build_inputs(args.dataset, args.embeddings or None, args.domains, min_items=min_items,
                               seen_in=ITEM_SUBSETS[args.items])
    log.info("%d items%s, method %s", len(inputs.item_ids),
             "" if inputs.embeddings is None else f", embeddings {inputs.embeddings.shape}", args.method)

    start = time.perf_counter()
    q = compute_codes(args, inputs)
    codes = resolve_collisions(q.codes, args.collision, q.codebook_sizes[-1], q.last_level_cost)
    seconds = time.perf_counter() - start

    meta = build_meta(args, inputs, q, codes, argv)
    quality = quality_report(
        q.codes, codes, meta["codebook_sizes"], q.recon_errors, inputs.embeddings,
        item_users(inputs.dataset, inputs.item_ids), args.quality_top_k, args.quality_pairs, args.seed)
    meta = write_sid_artifact(args.output_dir, inputs.item_ids, codes, meta, quality, q.arrays,
                              plot_title=f"{args.method} on {args.dataset}")
    print(format_summary(quality, meta))
    print(f"fit + encode + collisions: {seconds:.1f} s; wrote {args.output_dir}")
    return meta


if __name__ == "__main__":
    sys.exit(main())
