"""Dense-retrieval benchmark: test metrics, training time / peak RSS, query latency at 10k and 1M items. Prints JSON.

    python benchmarks/dense_bench.py --out benchmarks/results/dense.json

Every method is fitted with the settings of ``--config`` (configs/eval/amazon18.yaml: train + valid rows) and scored
on the test rows with the shared evaluation code (eval/evaluate.py; one target per row, so Recall@K = HR@K).
Latency: ``--latency_queries`` test rows recommended one at a time (K = 50, torch and faiss on 1 thread), each
method's own ``recommend`` on (a) the real catalogue (per-domain indexes), (b) 10k and (c) 1M items = the 7,145 real
item vectors + seeded random unit vectors (BM25: the real items' term rows repeated), one index over all items. The
methods take turns in blocks of 20 queries (warm within a block), so load from other processes hits them alike. At
1M, IVF and HNSW indexes are timed against the exact one (recall of their top 50 vs exact), on the random vectors
(the worst case for ANN) and on perturbed copies of real items (clustered like real text embeddings).
``--finetune_steps`` times a few steps of encoder fine-tuning (last 2 layers) on the real rows.

``--seed_vectors`` runs only the like-for-like comparison of the two morph models: XPERT and Mini_XPERT, each with
v_seed = the history mean and = the newest item (``dense_xpert_seed_vector`` / ``dense_seed_vector``), fitted and
scored as above on the config's protocol and rows, and stores it under ``seed_vector_comparison.<split>`` of
``--out``, keeping everything else in that file::

    python benchmarks/dense_bench.py --seed_vectors --config configs/eval/amazon18_dense_valid.yaml --out benchmarks/results/dense.json
    python benchmarks/dense_bench.py --seed_vectors --config configs/eval/amazon18.yaml --out benchmarks/results/dense.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

METHODS = ["random", "bm25", "bi_encoder", "bi_encoder_title", "xpert", "mini_xpert"]


def load(config: str, methods: list[str]):
    from trl import TrlParser

    from data_builders.dataset import load_rec_dataset
    from data_builders.embeddings import load_item_embeddings
    from eval import run
    from eval.evaluate import EvalRows

    (a,) = TrlParser((run.EvalArgs,)).parse_args_and_config(args=["--config", config, "--methods", *methods])
    run.check_args(a)
    dataset = load_rec_dataset(a.dataset)
    embeddings, _ = load_item_embeddings(a.embeddings, dataset=dataset)
    train_rows = [r for s in a.train_splits for r in dataset.splits[s].to_list()]
    return a, dataset, embeddings, train_rows, EvalRows.from_split(dataset.splits[a.split])


def load_split(config: str) -> str:
    import yaml

    return yaml.safe_load(Path(config).read_text()).get("split", "test")


def fit_and_score(a, dataset, embeddings, train_rows, rows) -> tuple[dict, dict]:
    """Fitted recommenders and their per-method results (metrics per domain, training)."""
    from eval import evaluate as E
    from eval import run
    from eval.recommenders import CandidateRule, Catalogue

    rule = CandidateRule(same_domain=a.same_domain, exclude_history=a.exclude_history)
    catalogue = Catalogue.from_dataset(dataset, a.seed)
    recs, out = {}, {}
    for method in a.methods:
        (rec,) = run.METHODS[method](a, rule)
        start = time.perf_counter()
        rec.fit(dataset, train_rows, embeddings)
        fit_s = time.perf_counter() - start
        lists, _ = E.collect_lists(rec, rows, E.request_size(a.ks, rule, 10), a.batch_size)
        by_domain = E.score_lists(lists, rows, catalogue, rule, a.ks, {})["by_domain"]
        log = rec.train_log
        out[method] = {
            **{f"{m}@{k}": {d: round(v[f"{'hr' if m == 'recall' else m}@{k}"], 4) for d, v in by_domain.items()}
               for m, k in (("recall", 10), ("recall", 50), ("ndcg", 10)) if k in a.ks},
            "params_per_user": log.get("params_per_user", 0), "train_seconds": round(fit_s, 1),
            "peak_rss_mb": log.get("peak_rss_mb"), "epochs": len(log.get("epoch_losses", [])),
            "final_loss": (log.get("epoch_losses") or [None])[-1],
        }
        recs[method] = rec
    return recs, out


def synthetic_catalogue(real_ids: list[str], n: int, seed: int):
    from eval.recommenders import Catalogue

    ids = list(real_ids) + [f"synthetic:{i}" for i in range(n - len(real_ids))]
    return Catalogue(ids, ["all"] * n, seed), np.random.default_rng(seed).integers(0, len(real_ids), n - len(real_ids))


def unit_vectors(real: np.ndarray, n: int, seed: int, noise: float | None = None) -> np.ndarray:
    """[n, d]: the real item vectors, then seeded synthetic unit vectors (made in chunks to bound memory).

    noise None: uniform random directions. noise σ: a random real item plus Gaussian noise of norm ≈ σ, normalised
    (cosine ≈ 1 / sqrt(1 + σ²) to its item), which keeps the clustered geometry of real text embeddings.
    """
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    out[: len(real)] = real
    rng = np.random.default_rng(seed)
    for s in range(len(real), n, 100_000):
        chunk = rng.standard_normal((min(100_000, n - s), real.shape[1]), dtype=np.float32)
        if noise is not None:
            chunk = real[rng.integers(0, len(real), len(chunk))] + chunk * (noise / np.sqrt(real.shape[1]))
        out[s : s + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def scaled(rec, n: int, index, seed: int):
    """A copy of a fitted recommender that ranks an n-item catalogue (one group, nothing else changed).

    Dense methods keep their query tower and history vectors and search ``index`` (an ItemIndex over n items).
    """
    from eval.recommenders import CandidateRule

    big = copy.copy(rec)
    if hasattr(rec, "index"):
        big.index = index
        return big
    big.rule = CandidateRule(same_domain=False, exclude_history=rec.rule.exclude_history)
    big.catalogue, repeat = synthetic_catalogue(rec.catalogue.item_ids, n, seed)
    if hasattr(rec, "bm25"):
        rows = np.concatenate([np.arange(len(rec.catalogue)), repeat])
        big.bm25 = copy.copy(rec.bm25)
        big.bm25.counts, big.bm25.weights_t = rec.bm25.counts[rows], rec.bm25.weights[rows].T.tocsr()
        big.popularity = np.zeros(n)
    return big


def time_interleaved(recs: dict, queries: list, k: int, block: int = 20) -> dict:
    """p50 / p95 ms per method. The methods take turns in blocks of ``block`` consecutive queries: within a block a
    method runs warm (as a server dedicated to it would), and load from other processes is spread over all methods."""
    times = {name: [] for name in recs}
    for s in range(0, len(queries), block):
        for name, rec in recs.items():
            rec.recommend(queries[s : s + 1], k)  # warm-up, not timed
            for q in queries[s : s + block]:
                start = time.perf_counter()
                rec.recommend([q], k)
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: {"p50": round(float(np.percentile(t, 50)), 3), "p95": round(float(np.percentile(t, 95)), 3)}
            for name, t in times.items()}


def ann_at(vectors: np.ndarray, queries: np.ndarray, args, seed: int) -> dict:
    """Exact vs IVF vs HNSW on the same n-item index: build seconds, then per search setting (nprobe / efSearch)
    p50 ms per query and recall of the top 50 vs exact."""
    from eval.dense.index import IndexConfig, build_index, search

    configs = {"exact": (IndexConfig(), [None]),
               "ivf": (IndexConfig(kind="ivf", ivf_nlist=args.ivf_nlist, seed=seed), args.ivf_nprobe),
               "hnsw": (IndexConfig(kind="hnsw", hnsw_m=args.hnsw_m, hnsw_ef_construction=args.hnsw_ef_construction),
                        args.hnsw_ef_search)}
    out, exact = {}, None
    for name, (cfg, settings) in configs.items():
        start = time.perf_counter()
        index = build_index(vectors, cfg)
        out[name] = {"build_s": round(time.perf_counter() - start, 1), **{
            k: getattr(cfg, k) for k in {"exact": (), "ivf": ("ivf_nlist", "ivf_points_per_list"),
                                         "hnsw": ("hnsw_m", "hnsw_ef_construction")}[name]}}
        for setting in settings:
            if name == "ivf":
                index.nprobe = setting
            elif name == "hnsw":
                index.hnsw.efSearch = setting
            times, hits = [], []
            for q in queries:
                start = time.perf_counter()
                _, rows = search(index, q[None], 50)
                times.append(1000 * (time.perf_counter() - start))
                hits.append(rows[0])
            exact = hits if exact is None else exact
            recall = np.mean([len(set(h) & set(e)) / 50 for h, e in zip(hits, exact)])
            key = {"exact": "search", "ivf": f"nprobe_{setting}", "hnsw": f"ef_search_{setting}"}[name]
            out[name][key] = {"p50_ms": round(float(np.median(times)), 3), "recall@50_vs_exact": round(float(recall), 4)}
        del index
    return out


def finetune_step_seconds(a, dataset, train_rows, steps: int) -> dict:
    """Seconds per training step with the encoder's last 2 layers fine-tuned (one domain's first rows)."""
    from eval import run
    from eval.recommenders import CandidateRule

    b = copy.copy(a)
    b.dense_finetune_encoder_layers, b.dense_negatives, b.dense_epochs = 2, "in_batch", 1
    (rec,) = run.METHODS["mini_xpert"](b, CandidateRule(same_domain=a.same_domain))
    domain = train_rows[0]["domain"]
    rows = [r for r in train_rows if r["domain"] == domain][: steps * a.dense_batch_size]
    start = time.perf_counter()
    rec.fit(dataset, rows, None)
    log = rec.train_log
    per_step = log["seconds"] / max(log["steps"], 1)
    steps_per_epoch = len(train_rows) / a.dense_batch_size
    return {"steps": log["steps"], "seconds_per_step": round(per_step, 2), "fit_seconds_incl_2x_catalogue_encoding":
            round(time.perf_counter() - start, 1), "peak_rss_mb": log["peak_rss_mb"],
            "estimated_hours_per_epoch": round(per_step * steps_per_epoch / 3600, 1),
            "item_max_tokens": a.dense_item_max_tokens, "batch_size": a.dense_batch_size}


SEED_VECTOR_KEYS = {"xpert": "dense_xpert_seed_vector", "mini_xpert": "dense_seed_vector"}


def seed_vector_comparison(config: str) -> dict:
    """XPERT and Mini_XPERT with each seed vector (mean, last) on the config's rows: the same rows, training rows
    and settings for all four; only v_seed changes within a model."""
    a, dataset, embeddings, train_rows, rows = load(config, list(SEED_VECTOR_KEYS))
    out = {}
    for method, key in SEED_VECTOR_KEYS.items():
        for seed_vector in ("mean", "last"):
            b = dataclasses.replace(a, methods=[method], **{key: seed_vector})
            _, res = fit_and_score(b, dataset, embeddings, train_rows, rows)
            out[f"{method}[seed_vector={seed_vector}]"] = {**res[method], "seed_vector": seed_vector,
                                                           "shipped": seed_vector == getattr(a, key)}
            print(method, seed_vector, json.dumps(res[method]["recall@10"]), flush=True)
    return {"data": f"{a.dataset}: fitted on {a.train_splits} ({len(train_rows)} rows), scored on "
                    f"{len(rows.queries)} {a.split} rows (all of them, the same for every variant)",
            "config": config, "methods": out,
            "command": f"python benchmarks/dense_bench.py --seed_vectors --config {config} --out "
                       "benchmarks/results/dense.json"}


def main() -> None:
    import faiss
    import torch

    from eval.dense.index import IndexConfig, ItemIndex
    from eval.recommenders import CandidateRule

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/eval/amazon18.yaml")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--latency_queries", type=int, default=200)
    parser.add_argument("--ivf_nlist", type=int, default=1024)
    parser.add_argument("--ivf_nprobe", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--hnsw_m", type=int, default=16)
    parser.add_argument("--hnsw_ef_construction", type=int, default=40)
    parser.add_argument("--hnsw_ef_search", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--perturbed_noise", type=float, default=0.75,
                        help="ANN also on real items + noise of this norm (cosine ≈ 0.8 to the item)")
    parser.add_argument("--finetune_steps", type=int, default=3, help="0 = skip the fine-tuning timing")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed_vectors", action="store_true",
                        help="only XPERT vs Mini_XPERT with each seed vector; merged into --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    if args.seed_vectors:
        split = load_split(args.config)
        comparison = seed_vector_comparison(args.config)
        result = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
        result.setdefault("seed_vector_comparison", {})[split] = comparison
        text = json.dumps(result, indent=2, sort_keys=True)
        print(json.dumps(comparison, indent=2, sort_keys=True))
        if args.out:
            args.out.write_text(text + "\n")
        return

    a, dataset, embeddings, train_rows, rows = load(args.config, args.methods)
    recs, results = fit_and_score(a, dataset, embeddings, train_rows, rows)
    pick = np.random.default_rng(a.seed).choice(len(rows.queries), args.latency_queries, replace=False)
    queries = [rows.queries[i] for i in pick]
    latency = {"catalogue": time_interleaved(recs, queries, 50)}
    ann = {}
    for n in args.sizes:
        vectors = unit_vectors(embeddings, n, a.seed)
        index = ItemIndex(vectors, synthetic_catalogue(dataset.item_ids, n, a.seed)[0],
                          CandidateRule(same_domain=False, exclude_history=a.exclude_history), IndexConfig())
        big = {name: scaled(rec, n, index, a.seed) for name, rec in recs.items()}
        latency[n] = time_interleaved(big, queries, 50)
        del big, index
        dense = [m for m in ("mini_xpert", "xpert", "bi_encoder", "bi_encoder_title") if m in recs]
        if n == max(args.sizes) and dense:  # ANN vs exact on the queries of the first of these methods
            qv = recs[dense[0]].query_vectors(queries)
            ann = {"queries_of": dense[0], "random_unit_vectors": ann_at(vectors, qv, args, a.seed)}
            del vectors
            vectors = unit_vectors(embeddings, n, a.seed, noise=args.perturbed_noise)
            ann[f"perturbed_real_items_noise_{args.perturbed_noise}"] = ann_at(vectors, qv, args, a.seed)
        del vectors
    label = {10_000: "10k", 1_000_000: "1m"}
    for name in recs:
        for size, by_method in latency.items():
            tag = label.get(size, str(size))
            results[name][f"latency_ms_p50_{tag}"] = by_method[name]["p50"]
            results[name][f"latency_ms_p95_{tag}"] = by_method[name]["p95"]
    result = {
        "machine": {"cpus": os.cpu_count(), "threads": 1, "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__},
        "data": f"{a.dataset}: fitted on {a.train_splits} ({len(train_rows)} rows), scored on {len(rows.queries)} "
                f"{a.split} rows; recall@K = HR@K (one target per row)",
        "rules": {"same_domain": a.same_domain, "exclude_history": a.exclude_history},
        "latency": f"{args.latency_queries} {a.split} rows one at a time, K = 50, 1 thread, methods in turns of 20 "
                   "queries; catalogue = the real per-domain indexes; 10k / 1M = real items + random unit vectors, "
                   "exact inner-product index (faiss IndexFlatIP) over all items",
        "target": "Mini_XPERT < 3.2 ms per query at 10k items (seed 000, Table 3, GPU)",
        "methods": results, f"ann_{label.get(max(args.sizes), max(args.sizes))}": ann,
        "finetune_encoder_last2": (finetune_step_seconds(a, dataset, train_rows, args.finetune_steps)
                                   if args.finetune_steps else None),
        "config": args.config, "command": "python benchmarks/dense_bench.py --out benchmarks/results/dense.json",
    }
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
