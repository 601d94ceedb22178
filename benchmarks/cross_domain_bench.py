"""Cross-domain benchmark (GenCDR, seed 001): one model per domain, one merged model, universal experts, + domain
adapters, + the user router, and the paper's ablations — on the embedded two-domain data.

    python benchmarks/cross_domain_bench.py                      # train what is missing, evaluate, write the JSON
    python benchmarks/cross_domain_bench.py --parts train        # only the training runs (2 at a time)
    python benchmarks/cross_domain_bench.py --parts eval collect
    python benchmarks/cross_domain_bench.py --parts select       # valid-row selection (train rows only)

Seeds 0, 1, 2: seed 0 runs every variant, the others the variants whose difference decides the claim
(``KEY_VARIANTS``); the domain-adaptive SIDs run seed 0. About 6 CPU hours in all (two jobs at a time on 2 cores).

Protocol = the main report's: every model trains on the train + valid rows (all-prior), is scored on every test row
(9,399: 4,533 Industrial_and_Scientific, 4,866 Office_Products) with the evaluation's own code (eval.run's
``evaluate_methods``: same catalogue, candidate rule ``same_domain``, K = 1, 3, 5, 10). Every model is trained by
the same loop (``python -m sft.cross_domain``) with the scratch recipe of the demo (``configs/sft/scratch.yaml``:
4-layer 128-d decoder, dropout 0.2, lr 1e-3, batch 32 packed sequences, 11.4 epochs); domain LoRAs 3 epochs.
Nothing is selected on test: the settings are the recipe's (chosen on valid earlier) and the paper's defaults.

Variants (rows of ``variants`` in the JSON; each ``{seed: {domain: metrics}}`` plus the mean / spread over seeds):

* ``per_domain``        — one plain model per domain, trained on that domain's rows only.
* ``merged``            — one plain model on both domains' rows (the main report's generative recipe).
* ``universal``         — 4 universal LoRA experts + gate (trained with the base: scratch has no pretrained base);
                          = the ablation "w/o domain adapter".
* ``universal_domain``  — + the row's domain LoRA (decoded with the domain path alone, α = 0).
* ``gencdr``            — + the user router: P = α(user) P_universal + (1 − α) P_domain inside the trie.
* ``fixed_alpha``       — gencdr with α = 0.5 for every user instead of the router.
* ``no_gate``           — gencdr with the experts averaged (1/N) instead of gated.
* ``no_universal``      — domain LoRAs + router on the merged model (no universal experts).
* ``no_prefix_tree``    — gencdr decoded without the trie (invalid / out-of-catalogue SIDs are misses).
* ``global_trie``       — gencdr decoded over both domains' items (cross-domain recommendation allowed).

Each with the default SIDs (balanced RQ-KMeans, ``sids_balanced``) and, where listed in ``--adaptive-variants``, with
the domain-adaptive SIDs (``sids_gencdr``, configs/tokenization/amazon18_gencdr.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ART = Path("artifacts/amazon18")
WORK = ART / "cross_domain"
DOMAINS = ("Industrial_and_Scientific", "Office_Products")
SID_SETS = {"default": ART / "sids_balanced", "adaptive": ART / "sids_gencdr"}
SID_CONFIGS = {"adaptive": "configs/tokenization/amazon18_gencdr.yaml"}
CONFIG = "configs/sft/gencdr_scratch.yaml"
ALL_VARIANTS = ("per_domain", "merged", "universal", "universal_domain", "gencdr", "fixed_alpha", "no_gate",
                "no_universal", "no_prefix_tree", "global_trie")
KEY_VARIANTS = ("per_domain", "merged", "universal", "universal_domain", "gencdr", "no_universal")  # every seed
METRICS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10")


def env(threads: int = 1) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "TQDM_MININTERVAL": "30"}


def job_dir(sids: str, seed: int, name: str) -> Path:
    return WORK / sids / f"seed{seed}" / name


def train_jobs(sids: str, seed: int, variants: list[str]) -> list[dict]:
    """The training runs the variants need: name, command, output marker, dependencies."""
    base = [sys.executable, "-m", "sft.cross_domain", "--config", CONFIG, "--sid_dir", str(SID_SETS[sids]),
            "--seed", str(seed), "--show_progress", "false"]
    jobs = []
    need = set(variants)
    if "per_domain" in need:
        for d in DOMAINS:
            out = job_dir(sids, seed, f"per_domain_{d}")
            jobs.append({"name": f"{sids}/{seed}/per_domain_{d}", "done": out / "universal" / "genrec_cdr.json",
                         "cmd": base + ["--output_dir", str(out), "--domains", d, "--n_experts", "0",
                                        "--stages", "universal"], "after": []})
    if need & {"merged", "no_universal"}:
        out = job_dir(sids, seed, "merged")
        jobs.append({"name": f"{sids}/{seed}/merged", "done": out / "universal" / "genrec_cdr.json",
                     "cmd": base + ["--output_dir", str(out), "--n_experts", "0", "--stages", "universal"],
                     "after": []})
    if "no_universal" in need:
        out = job_dir(sids, seed, "merged")
        jobs.append({"name": f"{sids}/{seed}/merged+domains", "done": out / "router" / "genrec_cdr.json",
                     "cmd": base + ["--output_dir", str(out), "--universal_dir", str(out / "universal"),
                                    "--stages", "domains", "router"], "after": [f"{sids}/{seed}/merged"]})
    if need & {"universal", "universal_domain", "gencdr", "fixed_alpha", "no_prefix_tree", "global_trie"}:
        out = job_dir(sids, seed, "gencdr")
        jobs.append({"name": f"{sids}/{seed}/gencdr", "done": out / "router" / "genrec_cdr.json",
                     "cmd": base + ["--output_dir", str(out)], "after": []})
    if "no_gate" in need:
        out = job_dir(sids, seed, "no_gate")
        jobs.append({"name": f"{sids}/{seed}/no_gate", "done": out / "router" / "genrec_cdr.json",
                     "cmd": base + ["--output_dir", str(out), "--gate", "average"], "after": []})
    return jobs


def run_jobs(jobs: list[dict], workers: int) -> None:
    """Run jobs (skipping those already done), ``workers`` at a time, each after its dependencies."""
    done = {j["name"] for j in jobs if Path(REPO / j["done"]).is_file()}
    pending = [j for j in jobs if j["name"] not in done]
    logs = WORK / "logs"
    (REPO / logs).mkdir(parents=True, exist_ok=True)

    def run_one(job: dict) -> None:
        while any(dep not in done for dep in job["after"]):
            time.sleep(5)
        log_file = REPO / logs / (job["name"].replace("/", "_") + ".log")
        print(f"+ [{time.strftime('%H:%M:%S')}] {job['name']}: {' '.join(job['cmd'][1:])}", flush=True)
        start = time.process_time()
        with open(log_file, "w") as f:
            proc = subprocess.run(job["cmd"], cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode:
            raise SystemExit(f"{job['name']} failed (exit {proc.returncode}); see {log_file}")
        done.add(job["name"])
        print(f"  [{time.strftime('%H:%M:%S')}] {job['name']} done", flush=True)

    # dependencies last, so a worker never waits while independent work is queued
    pending.sort(key=lambda j: len(j["after"]))
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(run_one, j) for j in pending]:
            f.result()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["train", "eval", "collect"],
                   choices=["select", "train", "eval", "collect"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--sid-sets", nargs="+", default=["default", "adaptive"], choices=sorted(SID_SETS))
    p.add_argument("--seed0-variants", nargs="+", default=list(ALL_VARIANTS), choices=ALL_VARIANTS,
                   help="variants of seed 0 (default SIDs)")
    p.add_argument("--seed-variants", nargs="+", default=list(KEY_VARIANTS), choices=ALL_VARIANTS,
                   help="variants of the other seeds")
    p.add_argument("--adaptive-variants", nargs="+", default=list(KEY_VARIANTS), choices=ALL_VARIANTS,
                   help="variants with the domain-adaptive SIDs (seed 0)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/cross_domain.json")
    p.add_argument("--eval-one", nargs=3, metavar=("SIDS", "SEED", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.eval_one:
        sids, seed, variant = args.eval_one
        eval_one(sids, int(seed), variant)
        return 0
    plan = plan_runs(args)
    if "train" in args.parts:
        for sids in {s for s, _, _ in plan}:
            if not (REPO / SID_SETS[sids] / "meta.json").is_file() and sids in SID_CONFIGS:
                subprocess.run([sys.executable, "-m", "tokenization.build", "--config", SID_CONFIGS[sids]],
                               cwd=REPO, env=env(), check=True)
        jobs = [j for sids, seed, variants in plan for j in train_jobs(sids, seed, variants)]
        run_jobs(jobs, args.workers)
    if "select" in args.parts:
        run_jobs(select_jobs(), args.workers)
        run_evals([("select", 0, list(SELECT_SPEC))], args.workers)
    if "eval" in args.parts:
        run_evals(plan, args.workers)
    if "collect" in args.parts:
        result = collect(plan)
        out = REPO / args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(json.dumps(result["summary"], indent=1))
        print(f"wrote {args.out}")
    return 0


# variant -> (training run it decodes, decoding path, decoding options)
VARIANT_SPEC = {
    "merged": ("merged", "universal", {}),
    "universal": ("gencdr", "universal", {}),
    "universal_domain": ("gencdr", "domain", {}),
    "gencdr": ("gencdr", "router", {}),
    "fixed_alpha": ("gencdr", "average", {}),
    "no_gate": ("no_gate", "router", {}),
    "no_universal": ("merged", "router", {}),
    "no_prefix_tree": ("gencdr", "router", {"constrained": False}),
    "global_trie": ("gencdr", "router", {"global_trie": True}),
}


def router_seconds_fallback() -> float | None:
    meta = REPO / job_dir("select", 0, "gencdr_e3") / "router" / "genrec_cdr.json"
    return json.loads(meta.read_text("utf-8")).get("training", {}).get("seconds") if meta.is_file() else None


def dataset_hash() -> str:
    return json.loads((REPO / ART / "dataset" / "meta.json").read_text("utf-8"))["dataset_hash"]


# Selection on valid (train rows only): the domain LoRA's epochs, decided by the router path's valid NDCG@10
SELECT_EPOCHS = (3, 8)
SELECT_NOISE = 0.0016  # 2-seed valid NDCG@10 spread of the scratch SFT recipe (benchmarks/results/quality.json)
SELECT_SPEC = {"e3_universal": ("gencdr_e3", "universal"),
               **{f"e{e}_{p}": (f"gencdr_e{e}", p) for e in SELECT_EPOCHS for p in ("domain", "router")}}


def select_jobs() -> list[dict]:
    base = [sys.executable, "-m", "sft.cross_domain", "--config", CONFIG, "--sid_dir", str(SID_SETS["default"]),
            "--seed", "0", "--show_progress", "false", "--train_splits", "train"]
    first = job_dir("select", 0, f"gencdr_e{SELECT_EPOCHS[0]}")
    jobs = [{"name": "select/0/gencdr_e3", "done": first / "router" / "genrec_cdr.json", "after": [],
             "cmd": base + ["--output_dir", str(first), "--domain_epochs", str(SELECT_EPOCHS[0])]}]
    for e in SELECT_EPOCHS[1:]:
        out = job_dir("select", 0, f"gencdr_e{e}")
        jobs.append({"name": f"select/0/gencdr_e{e}", "done": out / "router" / "genrec_cdr.json",
                     "after": ["select/0/gencdr_e3"],
                     "cmd": base + ["--output_dir", str(out), "--universal_dir", str(first / "universal"),
                                    "--stages", "domains", "router", "--domain_epochs", str(e)]})
    return jobs


def eval_path(sids: str, seed: int, variant: str) -> Path:
    return WORK / sids / f"seed{seed}" / "eval" / f"{variant}.json"


def variant_runs(sids: str, seed: int, variant: str) -> list[Path]:
    """The training run directories a variant decodes with."""
    if sids == "select":
        return [REPO / job_dir(sids, seed, SELECT_SPEC[variant][0])]
    if variant == "per_domain":
        return [REPO / job_dir(sids, seed, f"per_domain_{d}") for d in DOMAINS]
    return [REPO / job_dir(sids, seed, VARIANT_SPEC[variant][0])]


def build_variant(sids: str, seed: int, variant: str):
    from eval.models.cross_domain import CrossDomainRecommender, PerDomainRecommender

    if variant == "per_domain":
        return PerDomainRecommender({d: CrossDomainRecommender(str(run), name=f"per_domain_{d}", path="universal")
                                     for d, run in zip(DOMAINS, variant_runs(sids, seed, variant))}, name=variant)
    if sids == "select":
        return CrossDomainRecommender(str(variant_runs(sids, seed, variant)[0]), name=variant,
                                      path=SELECT_SPEC[variant][1])
    _, path, options = VARIANT_SPEC[variant]
    return CrossDomainRecommender(str(variant_runs(sids, seed, variant)[0]), name=variant, path=path, **options)


def stage_seconds(run: Path, variant: str) -> dict[str, float]:
    """Training seconds (one thread) of the stages a variant uses, from their genrec_cdr.json."""
    from sft.cross_domain import universal_of

    path = SELECT_SPEC[variant][1] if variant in SELECT_SPEC else VARIANT_SPEC.get(variant, (None, "universal"))[1]
    metas = [universal_of(run) / "genrec_cdr.json"]
    if path != "universal":
        metas += sorted((run / "domains").glob("*/genrec_cdr.json"))
    if path == "router":
        metas.append(run / "router" / "genrec_cdr.json")
    out: dict[str, float] = {}
    for m in metas:
        meta = json.loads(m.read_text(encoding="utf-8"))
        key = meta["stage"] + (f":{meta['domain']}" if meta["stage"] == "domain" else "")
        out[key] = (meta.get("training") or {}).get("seconds")
    return out


def eval_one(sids: str, seed: int, variant: str) -> None:
    """Score one variant on every test row with eval.run's own code; writes its JSON (eval_path)."""
    import logging

    import torch

    from data_builders.dataset import load_rec_dataset
    from eval import evaluate as E
    from eval.recommenders import CandidateRule
    from eval.run import EvalArgs, evaluate_methods

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    split, train_splits = ("valid", ["train"]) if sids == "select" else ("test", ["train", "valid"])
    a = EvalArgs(dataset=str(ART / "dataset"), output_dir="", split=split, train_splits=train_splits,
                 methods=[variant], ks=[1, 3, 5, 10], latency_rows=20, batch_size=512, seed=0)
    dataset = load_rec_dataset(REPO / a.dataset)
    train_rows = [r for s in a.train_splits for r in dataset.splits[s].to_list()]
    rows = E.EvalRows.from_split(dataset.splits[a.split])
    rule = CandidateRule(same_domain=True, exclude_history=False)
    rec = build_variant(sids, seed, variant)
    start = time.perf_counter()
    rec.fit(dataset, train_rows, None)
    res = evaluate_methods(a, dataset, train_rows, None, rows, rule, prebuilt={variant: [rec]})
    alphas = getattr(rec, "alphas", {})
    out = {
        "sids": sids, "seed": seed, "variant": variant, "split": a.split, "eval_rows": len(rows.queries),
        "train_splits": a.train_splits, "metrics": res["methods"][variant],
        "recommend_seconds": res["training"][variant]["recommend_seconds"],
        "latency_ms": res["latency_ms"][variant], "load_seconds": round(time.perf_counter() - start, 1),
        "alpha_mean": {d: sum(v) / len(v) for d, v in sorted(alphas.items())} if alphas else None,
        "invalid_beam_share": rec.beams[0] / rec.beams[1] if getattr(rec, "beams", [0, 0])[1] else None,
        "training_seconds": {str(r.name): stage_seconds(r, variant) for r in variant_runs(sids, seed, variant)},
        "runs": [str(r.relative_to(REPO)) for r in variant_runs(sids, seed, variant)],
    }
    path = REPO / eval_path(sids, seed, variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_evals(plan, workers: int) -> None:
    jobs = []
    for sids, seed, variants in plan:
        for v in variants:
            if (REPO / eval_path(sids, seed, v)).is_file():
                continue
            if not all((run / ("router" if sids == "select" else "universal") / "genrec_cdr.json").is_file()
                       for run in variant_runs(sids, seed, v)):
                print(f"  skip {sids}/{seed}/{v}: not trained", flush=True)
                continue
            jobs.append({"name": f"{sids}/{seed}/eval_{v}", "done": eval_path(sids, seed, v), "after": [],
                         "cmd": [sys.executable, str(Path(__file__).resolve()), "--eval-one", sids, str(seed), v]})
    run_jobs(jobs, workers)


def collect(plan) -> dict:
    """Every evaluated (SID set, seed, variant) into the benchmark JSON: per seed, the mean and the spread."""
    import statistics

    runs: dict = {}
    for sids, seed, variants in plan:
        for v in variants:
            path = REPO / eval_path(sids, seed, v)
            if path.is_file():
                runs.setdefault(sids, {}).setdefault(v, {})[str(seed)] = json.loads(path.read_text("utf-8"))
    result: dict = {"protocol": __doc__.split("Variants")[0].strip(), "command":
                    "python benchmarks/cross_domain_bench.py", "sid_sets": {k: str(v) for k, v in SID_SETS.items()},
                    "variants": {}, "seeds": {}, "spread": {}, "cpu_minutes": {}, "alpha_mean": {}, "summary": {},
                    "runs": {}, "split": "test", "train_splits": ["train", "valid"], "dataset_hash": dataset_hash(),
                    "domains": list(DOMAINS), "train_config": CONFIG}
    for sids, by_variant in runs.items():
        for v, by_seed in by_variant.items():
            name = v if sids == "default" else f"{v}@{sids}"
            seeds = sorted(by_seed, key=int)
            domains = list(by_seed[seeds[0]]["metrics"])
            result["variants"][name] = {d: {m: statistics.mean(by_seed[s]["metrics"][d][m] for s in seeds)
                                            for m in METRICS} for d in domains}
            result["seeds"][name] = {s: {d: {m: by_seed[s]["metrics"][d][m] for m in METRICS} for d in domains}
                                     for s in seeds}
            result["spread"][name] = {d: {m: (max(by_seed[s]["metrics"][d][m] for s in seeds)
                                              - min(by_seed[s]["metrics"][d][m] for s in seeds))
                                          for m in ("hr@10", "ndcg@10")} for d in domains} if len(seeds) > 1 else None
            first = by_seed[seeds[0]]
            for stages in first["training_seconds"].values():  # routers trained before their time was recorded
                if stages.get("router", 0) is None:
                    stages["router"] = router_seconds_fallback()
                    stages["router_seconds_from"] = "the select run's router (same 6,000 windows, 400 steps)"
            train = [t for r in first["training_seconds"].values() for t in r.values() if not isinstance(t, str)]
            result["cpu_minutes"][name] = {
                "train": round(sum(train) / 60, 1) if None not in train else None,
                "train_stages": first["training_seconds"], "recommend": round(first["recommend_seconds"] / 60, 2),
                "latency_ms": first["latency_ms"]}
            result["alpha_mean"][name] = first["alpha_mean"]
            if first.get("invalid_beam_share"):
                result.setdefault("invalid_beam_share", {})[name] = first["invalid_beam_share"]
            result["summary"][name] = {d: round(result["variants"][name][d]["ndcg@10"], 4) for d in domains}
            result["runs"][name] = {"seeds": [int(s) for s in seeds], "dirs": first["runs"],
                                    "description": DESCRIPTIONS.get(v, v)}
            result.setdefault("eval_rows", first["eval_rows"])
    result["selection"] = selection()
    result["domain_overlap"] = domain_overlap()
    result["claims"] = claims(result)
    result["ablations"] = ablations(result)
    return result


DESCRIPTIONS = {
    "per_domain": "one plain model per domain, trained on its domain's rows",
    "merged": "one plain model on both domains' rows",
    "universal": "4 universal LoRA experts + gate (w/o domain adapter)",
    "universal_domain": "+ the row's domain LoRA alone (alpha = 0)",
    "gencdr": "+ user router: alpha P_universal + (1 - alpha) P_domain in the trie",
    "fixed_alpha": "gencdr with alpha = 0.5 for every user (w/o router)",
    "no_gate": "gencdr with the experts averaged (w/o gate)",
    "no_universal": "domain LoRAs + router on the merged model (w/o universal experts)",
    "no_prefix_tree": "gencdr decoded without the trie (w/o prefix tree)",
    "global_trie": "gencdr decoded over both domains' items",
}
# seed 001's ablation (NDCG@10, mean drop over its four domains) -> our variant
PAPER_ABLATIONS = {"w/o universal experts": ("no_universal", 18.5), "w/o domain expert": ("universal", 13.5),
                   "w/o MoE gate": ("no_gate", 7.7), "w/o prefix tree": ("no_prefix_tree", 2.85)}


def domain_overlap() -> dict:
    """What the two domains share, the usual reason cross-domain transfer helps or not: users, item semantics
    (each item's nearest item by text embedding: in the other domain how often, against that domain's share of the
    catalogue) and first SID codes."""
    import numpy as np

    from data_builders.dataset import load_rec_dataset
    from tokenization.artifact import load_sid_artifact

    ds = load_rec_dataset(REPO / ART / "dataset")
    dom = np.array(ds.items["domain"])
    emb = np.load(REPO / ART / "embeddings" / "embeddings.npy").astype(np.float32)  # normalised, dataset item order
    nearest = np.empty(len(emb), dtype=np.int64)
    for s in range(0, len(emb), 1024):
        sim = emb[s:s + 1024] @ emb.T
        sim[np.arange(sim.shape[0]), np.arange(s, s + sim.shape[0])] = -np.inf
        nearest[s:s + 1024] = sim.argmax(1)
    users = {d: {r["user_id"] for split in ds.splits.values() for r in split if r["domain"] == d} for d in DOMAINS}
    out = {"users": {"per_domain": {d: len(u) for d, u in users.items()},
                     "same_id_in_both": len(users[DOMAINS[0]] & users[DOMAINS[1]]),
                     "note": "user ids are numbered per domain by the MiniOneRec release (no cross-domain user link); "
                             "an id in both domains is not known to be one person"},
           "nearest_item_other_domain": {}}
    for d in DOMAINS:
        mine = dom == d
        out["nearest_item_other_domain"][d] = {"share": float((dom[nearest[mine]] != d).mean()),
                                               "if_random": float((dom != d).sum() / (len(dom) - 1))}
    for sids, path in SID_SETS.items():
        if (REPO / path / "meta.json").is_file():
            art = load_sid_artifact(REPO / path)
            first = dict(zip(art.item_ids, art.codes[:, 0].tolist()))
            used = [{first[i] for i, x in zip(ds.item_ids, dom) if x == d} for d in DOMAINS]
            out[f"first_codes_{sids}"] = {"used": [len(u) for u in used], "in_both": len(used[0] & used[1])}
    return out


def selection() -> dict:
    """The valid-row selection (train rows only, seed 0): NDCG@10 / HR@10 per decoding and domain-LoRA epochs."""
    found = {}
    for v in SELECT_SPEC:
        path = REPO / eval_path("select", 0, v)
        if path.is_file():
            m = json.loads(path.read_text("utf-8"))["metrics"]
            found[v] = {d: {k: m[d][k] for k in METRICS} for d in m}
    routers = {int(v.split("_")[0][1:]): found[v]["all"]["ndcg@10"] for v in found if v.endswith("_router")}
    top = max(routers.values()) if routers else None
    chosen = min(e for e, x in routers.items() if x >= top - SELECT_NOISE) if routers else None
    return {"split": "valid", "train_splits": ["train"], "seed": 0, "variants": found, "chosen_domain_epochs": chosen,
            "rule": f"the fewest domain-LoRA epochs whose router path is within {SELECT_NOISE} (the SFT recipe's "
                    "valid NDCG@10 seed spread, quality.json recipes) of the best valid NDCG@10 (all rows); the "
                    "margin was fixed after e8_domain and before e8_router was scored",
            "command": "python benchmarks/cross_domain_bench.py --parts select"}


def claims(result: dict) -> dict:
    """gencdr vs each baseline per domain: the NDCG@10 gain and whether it exceeds the seed spread of both."""
    out = {}
    v, spread = result["variants"], result["spread"]
    if "gencdr" not in v:
        return out
    for base in ("per_domain", "merged", "universal_domain"):
        if base not in v:
            continue
        out[base] = {}
        for d in DOMAINS:
            gain = v["gencdr"][d]["ndcg@10"] - v[base][d]["ndcg@10"]
            noise = max((spread.get(n) or {}).get(d, {}).get("ndcg@10", float("nan")) for n in ("gencdr", base))
            out[base][d] = {"gain": gain, "relative": gain / v[base][d]["ndcg@10"], "seed_spread": noise,
                            "beats": bool(gain > noise) if noise == noise else None}
    return out


def ablations(result: dict) -> dict:
    """Each ablation's NDCG@10 change from gencdr (%, mean of the two domains), on the seeds both were run with
    (paired), beside the paper's."""
    seeds = result["seeds"]
    out = {}
    for label, (name, paper) in PAPER_ABLATIONS.items():
        common = sorted(set(seeds.get(name, {})) & set(seeds.get("gencdr", {})), key=int)
        if not common:
            continue
        change = {d: 100 * (sum(seeds[name][s][d]["ndcg@10"] for s in common)
                            / sum(seeds["gencdr"][s][d]["ndcg@10"] for s in common) - 1) for d in DOMAINS}
        out[label] = {"variant": name, "seeds": [int(s) for s in common],
                      "ours_change_pct": sum(change.values()) / len(change), "ours_change_pct_by_domain": change,
                      "paper_change_pct": -paper}
    return out


def plan_runs(args) -> list[tuple[str, int, list[str]]]:
    """(SID set, seed, variants) to train and evaluate."""
    plan = []
    for sids in args.sid_sets:
        for seed in args.seeds:
            if sids == "default":
                variants = args.seed0_variants if seed == args.seeds[0] else args.seed_variants
            elif seed == args.seeds[0]:
                variants = args.adaptive_variants
            else:
                continue
            plan.append((sids, seed, list(variants)))
    return plan


if __name__ == "__main__":
    sys.exit(main())
