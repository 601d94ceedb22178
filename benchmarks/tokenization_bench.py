"""SID tokenisation benchmark: fit + encode time, peak RSS and codebook quality per method and dataset. Prints JSON.

    python benchmarks/tokenization_bench.py --out benchmarks/results/tokenization.json
    python benchmarks/tokenization_bench.py --skip_1m --methods rq_kmeans faiss_rq   # quick check

Methods: ``rq_kmeans`` (ours, greedy), ``balanced_rq_kmeans``, ``fsq`` and ``faiss_rq`` = ``faiss.ResidualQuantizer``
at its defaults (beam 5), the reference. Datasets: the embedded Amazon 2018 data (each domain and merged, from
``--data_root``, i.e. the output of ``make demo``) and synthetic clustered unit vectors, 100k and 1M x 384.
Every run happens in its own subprocess (so peak RSS is per run) under ``--timeout`` seconds; a run that is
skipped or times out is recorded with its reason. Wall seconds depend on what else runs on the machine: each run
also records its CPU seconds (all threads) and the 1-minute load average when it started. Collision "after" applies the artifact's default resolution
(a de-duplication level) to every method, faiss included.

Training sample: the embedded catalogues (<= 7.1k items) train on all items; synthetic runs train every level on
``--sample_sizes[0]`` rows (default 65,536 = 256 points per centroid, faiss' own default cap, made explicit) and
encode all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from eval.memory import peak_rss_mb

REPO = Path(__file__).resolve().parent.parent
METHODS = ("rq_kmeans", "balanced_rq_kmeans", "fsq", "faiss_rq")
DOMAINS = ("Industrial_and_Scientific", "Office_Products")


def synthetic_embeddings(n: int, d: int = 384, centres: int = 2000, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``centres`` random centres (two scales of structure), float32 [n, d], built in chunks."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((centres // 20, d), dtype=np.float32)
    fine = coarse[rng.integers(0, len(coarse), centres)] + 0.6 * rng.standard_normal((centres, d), dtype=np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = fine[rng.integers(0, centres, m)] + 0.8 * rng.standard_normal((m, d), dtype=np.float32)
        x[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def load_dataset(name: str, data_root: Path) -> np.ndarray:
    """``synthetic:<n>`` or ``amazon18:<domain>|merged`` -> embeddings float32 [N, d]."""
    kind, _, which = name.partition(":")
    if kind == "synthetic":
        return synthetic_embeddings(int(which))
    from tokenization.inputs import load_build_inputs

    domains = () if which == "merged" else (which,)
    return load_build_inputs(data_root / "dataset", data_root / "embeddings", domains).embeddings


def faiss_rq_codes(x: np.ndarray, levels: int, codebook_size: int, sample: int | None, seed: int
                   ) -> tuple[np.ndarray, dict]:
    """faiss.ResidualQuantizer at its defaults (beam 5), trained on the same sample as ours; codes [N, levels]
    and how often the level-1 code is not the nearest level-1 centroid."""
    import faiss

    from tokenization.rq_kmeans import nearest, sample_row_indices

    nbits = int(np.log2(codebook_size))
    rq = faiss.ResidualQuantizer(x.shape[1], levels, nbits)
    rq.train(np.ascontiguousarray(x[sample_row_indices(len(x), sample, seed)]))
    packed = rq.compute_codes(x)  # [N, levels] bytes when nbits == 8
    codes = packed.astype(np.int64) if nbits == 8 else None
    if codes is None:
        raise ValueError("faiss_rq reference supports codebook_size 256 only (byte-aligned codes)")
    level1 = faiss.vector_to_array(rq.codebooks).reshape(-1, x.shape[1])[:codebook_size]
    off = float((codes[:, 0] != nearest(x, level1)).mean())
    return codes, {"max_beam_size": int(rq.max_beam_size), "level1_not_nearest_centroid": round(off, 4)}


def fit_encode(method: str, x: np.ndarray, sample: int | None, seed: int) -> tuple[np.ndarray, dict]:
    from tokenization import methods

    if method == "rq_kmeans":
        q = methods.rq_kmeans_codes(x, 3, 256, seed, 20, sample)
    elif method == "balanced_rq_kmeans":
        q = methods.balanced_rq_kmeans_codes(x, 3, 256, seed, 20, sample)
    elif method == "fsq":
        epochs = 50 if len(x) < 20_000 else 10
        q = methods.fsq_codes(x, [16] * 6, 2, seed, hidden=256, epochs=epochs, batch_size=256 if len(x) < 20_000
                              else 512, sample_size=sample)
        q.info["epochs"] = epochs
    else:
        return faiss_rq_codes(x, 3, 256, sample, seed)
    info = dict(q.info)
    if q.recon_errors:
        info["reconstruction_mse"] = [round(e, 4) for e in q.recon_errors]
    return q.codes, info


def run_one(method: str, dataset: str, data_root: Path, sample_size: int, seed: int) -> dict:
    """One (method, dataset) run in this process: timings, RSS, quality numbers."""
    from tokenization.collisions import collision_stats, resolve_collisions
    from tokenization.quality import level_usage

    x = load_dataset(dataset, data_root)
    rss_loaded = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    sample = sample_size if dataset.startswith("synthetic") and len(x) > sample_size else None
    load = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    codes, info = fit_encode(method, x, sample, seed)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    usage = level_usage(codes, [256] * codes.shape[1])
    return {
        "method": method, "dataset": dataset, "n_items": len(x), "dim": int(x.shape[1]), "levels": 3,
        "codebook_size": 256, "train_sample": sample or len(x), "fit_encode_seconds": round(seconds, 2),
        "fit_encode_cpu_seconds": round(cpu_seconds, 2), "load_average_at_start": round(load, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "rss_after_loading_data_mb": round(rss_loaded),
        "collision_rate_before": collision_stats(codes)["collision_rate"],
        "collision_rate_after": collision_stats(resolve_collisions(codes, "dedup_level"))["collision_rate"],
        "utilization": [u["utilization"] for u in usage], "entropy": [u["entropy"] for u in usage],
        "max_entropy": usage[0]["max_entropy"], "gini": [u["gini"] for u in usage],
        "top10_share": [u["top_k_share"] for u in usage], "info": info,
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
    }


def plan(args) -> list[tuple[str, str, int, str | None]]:
    """(method, dataset, sample size, skip reason or None) for every run."""
    datasets = []
    if not args.skip_embedded:
        datasets += [f"amazon18:{d}" for d in DOMAINS] + ["amazon18:merged"]
    if not args.skip_100k:
        datasets.append("synthetic:100000")
    if not args.skip_1m:
        datasets.append("synthetic:1000000")
    runs = []
    for dataset in datasets:
        extra = [("rq_kmeans", n) for n in args.sample_sizes[1:] if "rq_kmeans" in args.methods]
        for method, sample in [(m, args.sample_sizes[0]) for m in args.methods] + extra:
            if sample != args.sample_sizes[0] and not dataset.startswith("synthetic"):
                continue
            reason = None
            if dataset.startswith("amazon18") and not (args.data_root / "embeddings" / "meta.json").exists():
                reason = f"{args.data_root}/embeddings missing (run `make demo`)"
            elif dataset == "synthetic:1000000" and method in args.skip_at_1m:
                reason = "skipped at 1M by --skip_at_1m (too slow for this 2-core machine's budget)"
            runs.append((method, dataset, sample, reason))
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="write the JSON list of runs here")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--data_root", type=Path, default=REPO / "artifacts" / "amazon18")
    p.add_argument("--sample_sizes", type=int, nargs="+", default=[65536],
                   help="training rows for synthetic data: every method uses the first; rq_kmeans also runs the others")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=int, default=900, help="seconds per run before it is recorded as timed out")
    p.add_argument("--skip_embedded", action="store_true")
    p.add_argument("--skip_100k", action="store_true")
    p.add_argument("--skip_1m", action="store_true")
    p.add_argument("--skip_at_1m", nargs="*", default=[], choices=METHODS, help="methods not run at 1M")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "DATASET"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        row = run_one(*args.child, args.data_root, args.sample_sizes[0], args.seed)
        print("RESULT " + json.dumps(row), flush=True)
        return
    results = []
    for method, dataset, sample, reason in plan(args):
        if reason is None:
            reason, row = child_run(method, dataset, sample, args)
            if row:
                results.append(row)
        if reason:
            results.append({"method": method, "dataset": dataset, "train_sample": sample, "skipped": reason})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


def child_run(method: str, dataset: str, sample: int, args) -> tuple[str | None, dict | None]:
    cmd = [sys.executable, __file__, "--child", method, dataset, "--data_root", str(args.data_root),
           "--sample_sizes", str(sample), "--seed", str(args.seed)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO, check=False)
    except subprocess.TimeoutExpired:
        return f"timed out after {args.timeout} s", None
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return None, json.loads(line[len("RESULT "):])
    return f"failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}", None


if __name__ == "__main__":
    main()
