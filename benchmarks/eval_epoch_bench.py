"""Seconds per training epoch of the sequence baselines (SASRec, semantic SASRec, STARS) with the settings of
configs/eval/amazon18.yaml, on the embedded data's rows; per 100k rows for sizing larger datasets. Prints JSON;
writes benchmarks/results/eval_epochs.json.

    OMP_NUM_THREADS=1 python benchmarks/eval_epoch_bench.py [--splits train,valid] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

METHODS = ("sasrec", "sasrec_semantic", "stars")


def measure(splits: list[str], epochs: int, methods: list[str]) -> dict:
    import torch

    from data_builders.cli import parse_config
    from data_builders.dataset import load_rec_dataset
    from data_builders.embeddings import load_item_embeddings
    from eval import run
    from eval.recommenders import CandidateRule

    torch.set_num_threads(1)
    config = str(REPO / "configs" / "eval" / "amazon18.yaml")
    (a,) = parse_config((run.EvalArgs,), ["--config", config, "--sasrec_epochs", str(epochs), "--semantic_epochs",
                                          str(epochs), "--stars_epochs", str(epochs),
                                          "--semantic_freeze_epochs", "1"])
    dataset = load_rec_dataset(REPO / a.dataset)
    a = run.resolve_history_len(a, dataset)
    embeddings, _ = load_item_embeddings(REPO / a.embeddings, dataset=dataset)
    rows = [r for s in splits for r in dataset.splits[s].to_list()]
    out = {"config": "configs/eval/amazon18.yaml", "splits": splits, "rows": len(rows), "epochs": epochs,
           "history_len": a.history_len, "threads": 1, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
           "load_average_before": os.getloadavg()[0], "methods": {}}
    for method in methods:
        (rec,) = run.METHODS[method](a, CandidateRule(same_domain=a.same_domain))
        rec.fit(dataset, rows, embeddings)
        per_epoch = rec.train_log["epoch_seconds"]
        out["methods"][method] = {"epoch_seconds": per_epoch, "per_100k_rows_s": round(per_epoch * 1e5 / len(rows), 1)}
    out["load_average_after"] = os.getloadavg()[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", default="train,valid")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "eval_epochs.json"))
    args = parser.parse_args()
    result = measure(args.splits.split(","), args.epochs, args.methods.split(","))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
