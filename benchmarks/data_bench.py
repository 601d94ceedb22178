"""Data-layer benchmark: import rows/s, serialisation items/s, embedding items/s, peak RSS. Prints JSON.

    python benchmarks/data_bench.py --out benchmarks/results/data.json      (or: make bench)

Runs on the embedded Amazon 2018 data (both domains). Each timing is the median of ``--repeats`` runs; the
embedding figure encodes ``--embed_sample`` serialised item texts (a fixed, seeded sample) at each token budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from eval.memory import peak_rss_mb


def median_seconds(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_import(repeats: int) -> dict:
    from data_builders.embedded import DOMAINS, EMBEDDED_DIR
    from data_builders.merge import merge_datasets
    from data_builders.minionerec import import_minionerec

    seconds, built = median_seconds(lambda: merge_datasets([import_minionerec(EMBEDDED_DIR / d, d) for d in DOMAINS]),
                                    repeats)
    per = lambda split: {d: sum(r.split == split and r.domain == d for r in built.rows) for d in DOMAINS}  # noqa
    return {"built": built, "import_seconds": round(seconds, 3), "import_rows_per_s": round(len(built.rows) / seconds),
            "rows_total": len(built.rows), "train_rows": per("train"), "valid_rows": per("valid"),
            "test_rows": per("test"), "items": {d: sum(i.domain == d for i in built.items) for d in DOMAINS}}


def bench_serialize(items, tokenizer, repeats: int) -> dict:
    from data_builders.serialize import serialize_item, token_counter

    records = [i.__dict__ for i in items]
    chars_s, _ = median_seconds(lambda: [serialize_item(r, 1000) for r in records], repeats)
    count = token_counter(tokenizer)
    tok_s, texts = median_seconds(lambda: [serialize_item(r, 254, count) for r in records], 1)
    lengths = [count(t) for t in texts]
    return {"serialize_items_per_s_char_budget": round(len(records) / chars_s),
            "serialize_items_per_s_token_budget": round(len(records) / tok_s),
            "serialized_tokens_mean": round(float(np.mean(lengths)), 1), "texts": texts}


def bench_embed(encoder, items, sample: int, budgets: list[int], batch_size: int) -> dict:
    from data_builders.serialize import serialize_item, token_counter

    rng = np.random.default_rng(0)
    chosen = [items[i].__dict__ for i in rng.choice(len(items), size=min(sample, len(items)), replace=False)]
    out = {}
    for budget in budgets:
        texts = [serialize_item(r, budget, token_counter(encoder.tokenizer)) for r in chosen]
        encoder.encode(texts[:batch_size], batch_size=batch_size, show_progress=False)  # warm-up
        t0 = time.perf_counter()
        encoder.encode(texts, batch_size=batch_size, show_progress=False)
        out[f"embed_items_per_s_{budget}_tokens"] = round(len(texts) / (time.perf_counter() - t0), 1)
    return out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embed_sample", type=int, default=256)
    parser.add_argument("--budgets", type=int, nargs="+", default=[254, 128, 64])
    args = parser.parse_args()

    from data_builders.embeddings import TextEncoder

    imported = bench_import(args.repeats)
    built = imported.pop("built")
    encoder = TextEncoder()
    serialized = bench_serialize(built.items, encoder.tokenizer, args.repeats)
    serialized.pop("texts")
    result = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "data": "embedded Amazon 2018 (MiniOneRec split), Industrial_and_Scientific + Office_Products",
        **imported, **serialized,
        **bench_embed(encoder, built.items, args.embed_sample, args.budgets, 64),
        "embed_sample": args.embed_sample,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "command": "python benchmarks/data_bench.py --out benchmarks/results/data.json",
    }
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
