"""RL after SFT, measured: does GRPO / DPO lift the SFT model's HR@10 / NDCG@10, by more than seed noise?

    python benchmarks/rl_bench.py                       # train + eval + assemble -> benchmarks/results/rl.json
    python benchmarks/rl_bench.py --parts assemble      # only rebuild the JSON from finished runs

Protocol (stated in the JSON): every variant starts from one SFT checkpoint, the scratch decoder trained on the
train windows only with its step chosen on valid (``artifacts/amazon18/quality/dropout_0.4_s0``, the recipe of
benchmarks/results/quality.json). RL trains on the same train rows, scores 1,000 fixed valid rows before its first
step and every ``val_every`` steps, and keeps the best of those (the SFT start included), so nothing is chosen on
test. Each finished policy is then scored on every valid row and every published test row (trie-constrained beam
search, 10 beams) — the published protocol: no valid row was trained on. ``sft`` is the starting point scored the
same way. Variants (configs/rl/*_scratch.yaml, one torch thread, a CPU-minute budget each):

* ``grpo`` — GRPO over 16 trie beams per prompt (``rollout_mode: beam``), reward = hit + MiniOneRec's NDCG penalty
* ``grpo_sample`` — the same over 16 samples of the constrained policy (on-policy)
* ``grpo_inject`` — beams, the target injected into groups that lack it, dropout kept in the loss forward
* ``dpo`` — DPO (+ an SFT term) on 3 self-hard negatives per row (the SFT model's top wrong beams)
* ``dpo_15min`` — the same with 15 CPU minutes (the 6-minute valid curves were still rising)

Two seeds each (the RL seed: row order, sampling). Reported per variant: valid and test per domain (mean over
seeds), per-seed numbers, spread (max - min over seeds), relative NDCG@10 gain over ``sft``, steps, CPU minutes,
tokens/s, the share of rollout groups that contain the target (reward sparsity), and the valid curve.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ART = Path("artifacts/amazon18")
PARENT = ART / "quality" / "dropout_0.4_s0"
OUT = ART / "rl_bench"
VALID_EVAL = "configs/eval/amazon18_generative_valid.yaml"
TEST_EVAL = "configs/eval/amazon18_rl_test.yaml"
VARIANTS = {
    "grpo": ("rl/grpo.py", "configs/rl/grpo_scratch.yaml"),
    "grpo_sample": ("rl/grpo.py", "configs/rl/grpo_sample_scratch.yaml"),
    "grpo_inject": ("rl/grpo.py", "configs/rl/grpo_inject_scratch.yaml"),
    "dpo": ("rl/dpo.py", "configs/rl/dpo_scratch.yaml"),
    # the 6-minute DPO curves were still rising at the budget's end (valid): the same with 15 CPU minutes
    "dpo_15min": ("rl/dpo.py", "configs/rl/dpo_scratch.yaml", ["--time_budget_minutes", "15"]),
}
DOMAINS = ("Industrial_and_Scientific", "Office_Products")
KEYS = ("hr@10", "ndcg@10", "hr@5", "ndcg@5")


def run(cmd: list[str], log_path: Path) -> float:
    """Run ``cmd`` (cwd = repo, one torch thread), output in ``log_path``; its own CPU minutes. Raises on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    log_path = REPO / log_path
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, even with runs in parallel
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {log_path}")
    return (usage.ru_utime + usage.ru_stime) / 60


def train_one(variant: str, seed: int, budget: float, extra: list[str]) -> dict:
    script, config, *own = VARIANTS[variant]
    out = OUT / f"{variant}_s{seed}"
    info_path = REPO / out / "bench_run.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    cmd = [sys.executable, script, "--config", config, "--sft_checkpoint", str(PARENT), "--train_splits", "train",
           "--val_rec_rows", "1000", "--val_every", "40", "--seed", str(seed), "--time_budget_minutes", str(budget),
           "--output_dir", str(out), *extra, *(own[0] if own else [])]
    cpu = run(cmd, OUT / f"{variant}_s{seed}.train.log")
    meta = json.loads((REPO / out / "genrec_sft.json").read_text())
    records = [json.loads(line) for line in (REPO / out / "metrics.jsonl").read_text().splitlines()]

    def mean(key):
        values = [r[key] for r in records if key in r]
        return round(sum(values) / len(values), 4) if values else None

    info = {"variant": variant, "seed": seed, "command": " ".join(cmd[1:]), "cpu_minutes": round(cpu, 2),
            "steps": meta["steps"], "best_step": meta.get("best_step"),
            "valid_curve_1000_rows": [{k: round(v, 4) if isinstance(v, float) else v for k, v in c.items()
                                       if k in ("step", "hr@10", "ndcg@10")} for c in meta.get("valid_curve", [])],
            "tokens_per_s": mean("tokens_per_s"), "peak_rss_mb": max((r.get("peak_rss_mb", 0) for r in records),
                                                                      default=None)}
    if script.endswith("grpo.py"):
        info.update(target_in_group=mean("rollout/target_in_group"), frac_reward_zero_std=mean("frac_reward_zero_std"),
                    kl_last=next((r["kl"] for r in reversed(records) if "kl" in r), None),
                    reward_curve=[{"step": r["step"], "reward": round(r["reward"], 4), "kl": round(r.get("kl", 0), 5),
                                   "target_in_group": r.get("rollout/target_in_group")}
                                  for r in records if "reward" in r])
    else:
        info.update(pairs=meta.get("pairs"), margin_curve=[{"step": r["step"], "margin": round(r["rewards/margins"], 4),
                                                             "accuracy": round(r["rewards/accuracies"], 4)}
                                                            for r in records if "rewards/margins" in r])
    info_path.write_text(json.dumps(info, indent=1))
    return info


def evaluate(name: str, ckpt: Path) -> None:
    for split, config in (("valid", VALID_EVAL), ("test", TEST_EVAL)):
        out = OUT / name / f"eval_{split}"
        if not (REPO / out / "metrics.json").exists():
            run([sys.executable, "-m", "eval.run", "--config", config, "--generative_checkpoint", str(ckpt),
                 "--output_dir", str(out)], OUT / name / f"eval_{split}.log")


def scores(name: str, split: str) -> dict:
    metrics = json.loads((REPO / OUT / name / f"eval_{split}" / "metrics.json").read_text())
    if metrics["split"] != split or metrics["train_splits"] != ["train"]:
        raise ValueError(f"{name}: {metrics['split']} on {metrics['train_splits']}, expected {split} on ['train']")
    gen = metrics["methods"]["generative"]
    return {d: {k: round(gen[d][k], 4) for k in KEYS} for d in (*DOMAINS, "all")} | {"_rows": metrics["eval_rows"]}


def assemble(variants: list[str], seeds: list[int]) -> dict:
    sft = {"valid": scores("sft", "valid"), "test": scores("sft", "test")}
    result: dict = {
        "protocol": ("Every variant starts from the train-only SFT scratch decoder " + str(PARENT) + " (its step "
                     "chosen on valid); RL trains on the train rows only, keeps its best step on 1,000 fixed valid "
                     "rows (the start included), and is scored on every valid row and every published test row "
                     "(trie beam search, 10 beams). Nothing is chosen on test. Spread = max - min over seeds."),
        "sft": {"valid": _strip(sft["valid"]), "test": _strip(sft["test"]), "seeds": [], "cpu_minutes": 0.0,
                "checkpoint": str(PARENT)},
    }
    for variant in variants:
        runs = [json.loads((REPO / OUT / f"{variant}_s{s}" / "bench_run.json").read_text()) for s in seeds
                if (REPO / OUT / f"{variant}_s{s}" / "bench_run.json").exists()]
        if not runs:
            continue
        per_seed = []
        for info in runs:
            name = f"{variant}_s{info['seed']}"
            per_seed.append({**info, "valid": _strip(scores(name, "valid")), "test": _strip(scores(name, "test"))})
        entry = {"valid": _mean(per_seed, "valid"), "test": _mean(per_seed, "test"),
                 "spread": {split: {d: {k: round(max(s[split][d][k] for s in per_seed)
                                              - min(s[split][d][k] for s in per_seed), 4) for k in ("hr@10", "ndcg@10")}
                                    for d in (*DOMAINS, "all")} for split in ("valid", "test")},
                 "seeds": per_seed, "steps": [s["steps"] for s in per_seed],
                 "cpu_minutes": round(sum(s["cpu_minutes"] for s in per_seed) / len(per_seed), 2),
                 "tokens_per_s": round(sum(s["tokens_per_s"] or 0 for s in per_seed) / len(per_seed), 1)}
        entry["gain_vs_sft"] = {split: {d: {"ndcg@10_rel": round(entry[split][d]["ndcg@10"] / sft[split][d]["ndcg@10"]
                                                                 - 1, 4),
                                            "hr@10_abs": round(entry[split][d]["hr@10"] - sft[split][d]["hr@10"], 4)}
                                        for d in (*DOMAINS, "all")} for split in ("valid", "test")}
        gains = entry["gain_vs_sft"]["test"]
        entry["meets_bar"] = bool(len(per_seed) >= 2 and all(
            gains[d]["ndcg@10_rel"] >= 0.05 and gains[d]["hr@10_abs"] >= 0
            and entry["test"][d]["ndcg@10"] - sft["test"][d]["ndcg@10"] > entry["spread"]["test"][d]["ndcg@10"]
            for d in DOMAINS) and entry["cpu_minutes"] <= 20)
        result[variant] = entry
    result["exploration_valid_1000_rows"] = exploration()
    demo = REPO / ART / "eval_generative" / "metrics.json"  # `make demo`: SFT and SFT+RL on train + valid rows
    if demo.exists():
        m = json.loads(demo.read_text())
        if {"generative", "generative_rl"} <= set(m["methods"]):
            result["make_demo_all_prior"] = {
                "protocol": f"make demo: SFT ({m['config'].get('generative_checkpoint')}) and its RL stage "
                            f"({m['config'].get('generative_rl_checkpoint')}) both trained on {m['train_splits']}, "
                            "one seed, no selection; test rows " + str(m["eval_rows"]),
                **{name: {d: {k: round(m["methods"][name][d][k], 4) for k in KEYS} for d in (*DOMAINS, "all")}
                   for name in ("generative", "generative_rl")}}
    return result


def exploration() -> dict:
    """The valid curves (1,000 rows) of the exploratory runs in artifacts/amazon18/rl_runs (how the settings were
    chosen; some were stopped early once the curve was clear). Runs whose name ends in ``_biased`` scored the rows the
    SFT start was selected on (before RL's validation left them out), so their step 0 is optimistic."""
    found = {}
    root = REPO / ART / "rl_runs"
    for path in sorted(root.glob("*/metrics.jsonl")) if root.exists() else []:
        curve = [{"step": r["step"], "ndcg@10": round(r["valid_ndcg@10"], 4), "hr@10": round(r["valid_hr@10"], 4)}
                 for r in map(json.loads, path.read_text().splitlines()) if "valid_ndcg@10" in r]
        if curve:
            found[path.parent.name] = curve
    return found


def _strip(found: dict) -> dict:
    return {d: v for d, v in found.items() if not d.startswith("_")}


def _mean(per_seed: list[dict], split: str) -> dict:
    return {d: {k: round(sum(s[split][d][k] for s in per_seed) / len(per_seed), 4) for k in KEYS}
            for d in (*DOMAINS, "all")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["train", "eval", "assemble"],
                    choices=["train", "eval", "assemble"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--budget_minutes", type=float, default=6.0, help="RL CPU minutes per run (one thread)")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every RL run")
    ap.add_argument("--out", default="benchmarks/results/rl.json")
    args = ap.parse_args(argv)
    if not (REPO / PARENT / "genrec_sft.json").exists():
        print(f"error: {PARENT}: the SFT starting point is missing; run `python benchmarks/quality_bench.py --parts "
              "recipes` (it trains it)", file=sys.stderr)
        return 2
    jobs = [(v, s) for v in args.variants for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        if "train" in args.parts:
            list(pool.map(lambda job: train_one(*job, args.budget_minutes, args.extra), jobs))
        if "eval" in args.parts:
            names = [("sft", PARENT)] + [(f"{v}_s{s}", OUT / f"{v}_s{s}") for v, s in jobs
                                         if (REPO / OUT / f"{v}_s{s}" / "genrec_sft.json").exists()]
            list(pool.map(lambda job: evaluate(*job), names))
    if "assemble" in args.parts:
        result = assemble(args.variants, args.seeds)
        (REPO / args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps({v: {"test": e["test"], "valid_all": e["valid"]["all"]} if "gain_vs_sft" not in e else
                          {"test_gain": e["gain_vs_sft"]["test"], "meets_bar": e["meets_bar"]}
                          for v, e in result.items() if isinstance(e, dict) and "test" in e},
                         indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
