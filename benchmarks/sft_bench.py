"""SFT benchmark on this CPU: throughput per training mode, and what a fixed CPU budget buys. Prints JSON.

    python benchmarks/sft_bench.py --out benchmarks/results/sft.json [--budget_minutes 10] [--parts throughput budget test]

* ``throughput``: SmolLM2-135M (all 30 layers, fp32) trained for a few steps through the real entry point
  (``sft/train.py``) in each mode — LoRA, full, 4-bit QLoRA (bitsandbytes NF4 on CPU), and LoRA on the first 4
  layers; tokens/s (first logged interval dropped as warm-up) and peak RSS of each run, from its metrics.jsonl.
* ``budget``: each option trains for the same CPU budget on one torch thread (``--time_budget_clock cpu``: process
  CPU time, not eaten by other jobs on the shared cores; two threads would spin-wait whenever another job holds a
  core), then constrained beam search scores
  the same fixed validation rows (HR@10, NDCG@10, invalid rate). The CPU demo default is the option with the best
  NDCG@10. Options: SmolLM2-135M LoRA with all 30 / the first 8 / the first 4 layers, and the TIGER-style
  ``scratch`` decoder (configs/sft/scratch.yaml) on the same SIDs and on balanced RQ-KMeans SIDs.
* ``test``: the demo's SFT model on test (HR/NDCG@K, invalid rate per domain) beside popularity, read from the main
  command's generative evaluation (``artifacts/amazon18/eval_generative/metrics.json``, written by ``make demo``).

Each run is a separate process, so peak RSS is per run. The machine is shared: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "sft" / "smollm2_lora.yaml"
SCRATCH = REPO / "configs" / "sft" / "scratch.yaml"
THROUGHPUT_MODES = {  # name -> CLI overrides of configs/sft/smollm2_lora.yaml
    "lora": ["--mode", "lora", "--num_layers", "30"],
    "full": ["--mode", "full", "--num_layers", "30", "--learning_rate", "1.0e-4"],
    "qlora_4bit": ["--mode", "qlora", "--num_layers", "30", "--use_cpu", "true"],
    "lora_4_layers": ["--mode", "lora", "--num_layers", "4"],
}
BUDGET_OPTIONS = {  # name -> (config, CLI overrides)
    "scratch": (SCRATCH, ["--train_splits", "train"]),
    "scratch_balanced_sids": (SCRATCH, ["--train_splits", "train", "--sid_dir", "artifacts/amazon18/sids_balanced"]),
    "lora_4_layers": (CONFIG, ["--mode", "lora", "--num_layers", "4"]),
    "lora_8_layers": (CONFIG, ["--mode", "lora", "--num_layers", "8"]),
    "lora_30_layers": (CONFIG, ["--mode", "lora", "--num_layers", "30"]),
}


def train(out: Path, overrides: list[str], extra: list[str], config: Path = CONFIG, env: dict | None = None) -> float:
    """Run sft/train.py in a subprocess; returns wall seconds. Raises with the tail of stderr on failure."""
    cmd = [sys.executable, str(REPO / "sft" / "train.py"), "--config", str(config), "--output_dir", str(out),
           "--report_to", "none", *overrides, *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def throughput(work: Path, steps: int) -> dict:
    results = {}
    for name, overrides in THROUGHPUT_MODES.items():
        out = work / f"tp_{name}"
        extra = ["--max_steps", str(steps), "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
                 "--val_rec_rows", "0", "--time_budget_minutes", "30", "--load_best_model_at_end", "false"]
        train(out, overrides, extra)
        rates = [r["tokens_per_s"] for r in read_log(out) if "tokens_per_s" in r][1:]  # drop warm-up interval
        results[name] = {"tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in read_log(out)), "steps": steps}
        print(name, results[name], file=sys.stderr)
    return results


def budget(work: Path, minutes: float, val_rows: int, options: list[str], threads: int) -> dict:
    results = {}
    for name in options:
        config, overrides = BUDGET_OPTIONS[name]
        out = work / f"budget_{name}"
        extra = ["--time_budget_minutes", str(minutes), "--time_budget_clock", "cpu", "--eval_strategy", "no",
                 "--save_strategy", "no", "--load_best_model_at_end", "false", "--val_rec_rows", "0",
                 "--num_train_epochs", "100"]
        seconds = train(out, overrides, extra, config, env={"OMP_NUM_THREADS": str(threads)})
        log = read_log(out)
        losses = [r["loss"] for r in log if "loss" in r]
        results[name] = {"config": str(config.relative_to(REPO)), "overrides": overrides,
                         "train_wall_s": round(seconds, 1), "final_loss": round(losses[-1], 4) if losses else None,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in log), **validate(out, val_rows)}
        print(name, results[name], file=sys.stderr)
    best = max(results, key=lambda n: results[n]["ndcg@10"])
    return {"budget_minutes": minutes, "clock": "cpu (process CPU time / torch threads)", "threads": threads,
            "validation_rows": val_rows, "options": results, "winner": best}


def validate(checkpoint: Path, n_rows: int) -> dict:
    """Constrained beam search on the same fixed validation rows for every option."""
    from data_builders.dataset import load_rec_dataset
    from decoding.catalogue import Catalogue
    from sft.callbacks import constrained_metrics, sample_rows
    from sft.modeling import load_sft_checkpoint

    model, tok, artifact = load_sft_checkpoint(checkpoint)
    meta = json.loads((checkpoint / "genrec_sft.json").read_text())
    dataset = load_rec_dataset(meta["config"]["script"]["dataset_dir"])
    rows = sample_rows(dataset.splits["valid"], n_rows, seed=0)
    steps = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    t0 = time.perf_counter()
    metrics = constrained_metrics(model, tok, Catalogue.from_artifact(artifact, dataset), rows)
    return {"steps": steps, **{k: round(v, 4) for k, v in metrics.items()},
            "validation_s": round(time.perf_counter() - t0, 1)}


TEST_KEYS = ("hr@1", "hr@3", "hr@5", "hr@10", "ndcg@3", "ndcg@5", "ndcg@10", "invalid_rate")


def test_part(metrics_path: Path) -> dict:
    """``test`` / ``test_popularity`` per domain from an eval.run metrics.json that has a ``generative`` method."""
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} is missing: run `make demo` first (its last step writes it)")
    m = json.loads(metrics_path.read_text())
    if "generative" not in m["methods"]:
        raise ValueError(f"{metrics_path} has no `generative` method (methods: {m['method_order']})")
    sft_meta = json.loads((Path(m["config"]["generative_checkpoint"]) / "genrec_sft.json").read_text())
    state = json.loads((Path(m["config"]["generative_checkpoint"]) / "trainer_state.json").read_text())

    def pick(method: str) -> dict:
        return {dom: {k: round(v[k], 4) for k in TEST_KEYS if k in v} for dom, v in m["methods"][method].items()}

    rows = sum(v["rows"] for d, v in m["methods"]["generative"].items() if d != "all")
    return {"test": pick("generative"), "test_popularity": pick("popularity"),
            "test_source": {"sft_command": sft_meta["command"], "sft_steps": state["global_step"],
                            "eval_command": m["command"], "split": m["split"], "rows": rows}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "sft_bench")
    parser.add_argument("--parts", nargs="+", default=["throughput", "budget"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--eval_metrics", type=Path, default=REPO / "artifacts/amazon18/eval_generative/metrics.json")
    parser.add_argument("--budget_minutes", type=float, default=10.0)
    parser.add_argument("--val_rows", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per budget run: 1 keeps CPU time honest on shared cores (2 threads "
                             "spin-wait when another job holds a core)")
    parser.add_argument("--options", nargs="+", default=list(BUDGET_OPTIONS), choices=list(BUDGET_OPTIONS))
    args = parser.parse_args()
    previous = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    command = " ".join(["python", "benchmarks/sft_bench.py", *sys.argv[1:]])
    result = {**previous, "command": command}  # the latest run; `commands` says which run wrote each part
    result["commands"] = {**previous.get("commands", {}), **{part: command for part in args.parts}}
    if "throughput" in args.parts:
        result["throughput"] = throughput(args.work, args.steps)
        result["tokens_per_s"] = {k: v["tokens_per_s"] for k, v in result["throughput"].items()}
        result["peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in result["throughput"].items()}
    if "test" in args.parts:
        result.update(test_part(args.eval_metrics))
    if "budget" in args.parts:
        result["budget"] = budget(args.work, args.budget_minutes, args.val_rows, args.options, args.threads)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
