"""Decoding benchmark: trie-constrained beam search cost vs unconstrained and vs a naive per-row Python trie.

    python benchmarks/decoding_bench.py --out benchmarks/results/decoding.json

Model: SmolLM2-135M-Instruct (embedded, fp32) truncated to ``--num_layers`` decoder layers (default 2 — a *harder*
test for overhead ratios than the full model, since the model's own cost per step is smaller), with the SID tokens
of ``--levels`` x ``--codebook`` added. Catalogues: uniform random distinct SIDs of 1k / 10k / 100k / 1M items.
Workload: ``--batch`` users x ``--beams`` beams, prompts from the shared next-item prompt builder.

Per catalogue size, measured side by side in one process: every variant runs once per round, ``--repeats`` rounds.
Times are the *best* of the rounds (noise from other processes only ever adds time, so the minimum is the most
stable estimate on a shared machine); ``*_paired`` ratios are medians of the per-round ratios, for comparison:

* ``unconstrained_s`` / ``constrained_s`` / ``naive_s`` — ``model.generate`` beam search with the same explicit
  config and no processor / :class:`SidTrieLogitsProcessor` / HF ``prefix_allowed_tokens_fn`` backed by a Python dict
  of prefixes (the approach peers use);
* ``processor_ms_per_step`` / ``naive_ms_per_step`` — (timed after all sizes are built, interleaved across sizes,
  best of ``--step_rounds``) one processor call on [batch*beams, V] scores, averaged over
  the L+1 decoding steps, timed in isolation (``speedup_vs_naive`` = their ratio); both include writing a dense
  [batch*beams, V] output, which on CPU costs about as much as the rest;
* ``logic_ms_per_step`` / ``naive_logic_ms_per_step`` — only the "which tokens are allowed" part: the trie walk +
  bit-table unpack for all rows vs the per-row Python calls of the naive function (``logic_speedup_vs_naive``);
* ``prefill_once_s`` — :func:`decoding.beam.trie_beam_search` on the same prompts; ``prefill_once_speedup`` =
  ``constrained_s / prefill_once_s``;
* ``trie_build_s``, ``trie_mb`` — building the trie (+ its torch tables) from the catalogue's token ids, and the
  size of its arrays.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("decoding_bench")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/decoding.json"))
    p.add_argument("--model", default="embedded:smollm2-135m")
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--codebook", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--max_history", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="rounds of the end-to-end generate timings")
    p.add_argument("--step_rounds", type=int, default=10, help="rounds of the per-step processor timings")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def load_model(args):
    from sft.models import load_causal_lm
    from tokenization.sid_format import all_sid_tokens

    model, tok = load_causal_lm(args.model, num_layers=args.num_layers)
    tok.add_tokens(all_sid_tokens([args.codebook] * args.levels))
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():  # explicit, seeded SID rows (an untrained model: only timings matter here)
        ids = torch.arange(len(tok) - args.levels * args.codebook, len(tok))
        weight = model.get_input_embeddings().weight
        weight[ids] = torch.randn(len(ids), weight.shape[1], generator=torch.Generator().manual_seed(0)) * 0.02
    return model, tok


def time_interleaved(runs: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Run every variant once per round, ``repeats`` rounds, so machine noise hits all variants alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in runs.items():
                t0 = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - t0)
    return times, outputs


def step_inputs(ids: torch.Tensor, sids: np.ndarray, beams: int, width: int, seed: int):
    """(input_ids, scores) for every step t = 0..L: prompts expanded to beams + t tokens of random real SIDs."""
    rng = np.random.default_rng(seed)
    rows = ids.repeat_interleave(beams, dim=0)  # [B*K, P]
    gen = torch.from_numpy(sids[rng.integers(0, len(sids), len(rows))])  # [B*K, L]
    scores = torch.randn(len(rows), width, generator=torch.Generator().manual_seed(seed))  # [B*K, V]
    return [(torch.cat([rows, gen[:, :t]], dim=1), scores) for t in range(sids.shape[1] + 1)]


def step_timers(trie, naive_fn, inputs, prompt_length: int, beams: int, eos: int, pad: int) -> dict:
    """One timed pass per entry, in ms per decoding step: the processors over the L+1 steps (a fresh instance
    per pass, as in one generate call), and the allowed-set logic alone over steps 0..L-1."""
    from transformers import LogitsProcessorList, PrefixConstrainedLogitsProcessor

    from decoding.processor import SidTrieLogitsProcessor
    from decoding.trie import small_ops

    tables, rows = trie.tables("cpu"), len(inputs[0][0])
    roots = torch.full((rows,), trie.root(None))

    def processor(make):
        proc = make()
        for input_ids, scores in inputs:
            proc(input_ids, scores)

    def logic():  # as inside the processor: under small_ops
        with small_ops("cpu"):
            for t, (input_ids, _) in enumerate(inputs[:-1]):
                tables.allowed_codes(t, tables.walk(roots, input_ids[:, prompt_length:]))

    def naive_logic():
        for input_ids, _ in inputs[:-1]:
            [naive_fn(0, row) for row in input_ids]

    def per_step(fn, steps):
        def timed() -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) / steps * 1e3
        return timed

    ours = lambda: SidTrieLogitsProcessor(trie, [trie.root(None)] * (rows // beams), eos, pad)  # noqa: E731
    naive = lambda: LogitsProcessorList([PrefixConstrainedLogitsProcessor(naive_fn, beams)])  # noqa: E731
    return {"processor_ms_per_step": per_step(lambda: processor(ours), len(inputs)),
            "naive_ms_per_step": per_step(lambda: processor(naive), len(inputs)),
            "logic_ms_per_step": per_step(logic, len(inputs) - 1),
            "naive_logic_ms_per_step": per_step(naive_logic, len(inputs) - 1)}


def bench_steps(cases: dict[int, dict], rounds: int) -> dict[int, dict[str, float]]:
    """Per-step timings for every catalogue size, interleaved across sizes (same machine state), best round."""
    times = {n: {name: [] for name in timers} for n, timers in cases.items()}
    for _ in range(rounds):
        for n, timers in cases.items():
            for name, timed in timers.items():
                times[n][name].append(timed())
    return {n: {name: round(min(ts), 3) for name, ts in per.items()} for n, per in times.items()}


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``a_i / b_i``."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def bench_size(n: int, args, model, tok) -> tuple[dict, dict]:
    """End-to-end timings for one catalogue size; also returns its per-step timers (run later, interleaved)."""
    from decoding.beam import trie_beam_search
    from decoding.catalogue import Catalogue
    from decoding.generation import build_generation_config
    from decoding.processor import SidTrieLogitsProcessor
    from decoding.recommend import encode_prompts, generate_constrained, history_prompts
    from decoding.reference import DictPrefixAllowedTokens

    catalogue = Catalogue.synthetic(n, levels=args.levels, codebook_size=args.codebook, seed=args.seed)
    t0 = time.perf_counter()
    trie = catalogue.trie(tok)
    trie.tables("cpu")  # the torch copies the processor uses (built once per device)
    build_s = time.perf_counter() - t0
    sids = catalogue.token_ids(tok)  # [N, L]
    rng = np.random.default_rng(args.seed)
    histories = [[catalogue.item_ids[i] for i in rng.integers(0, n, args.max_history)] for _ in range(args.batch)]
    ids, mask = encode_prompts(tok, history_prompts(tok, catalogue, histories, args.max_history))
    roots = [trie.root(None)] * args.batch
    eos, pad = tok.eos_token_id, tok.pad_token_id
    config = build_generation_config(sid_length=trie.levels, eos_token_id=eos, pad_token_id=pad, mode="beam",
                                     num_beams=args.beams, num_return_sequences=args.beams)
    t0 = time.perf_counter()
    naive_fn = DictPrefixAllowedTokens(sids, prompt_length=ids.shape[1], eos_token_id=eos)
    naive_build_s = time.perf_counter() - t0
    runs = {
        "unconstrained": lambda: model.generate(input_ids=ids, attention_mask=mask, generation_config=config),
        "constrained": lambda: generate_constrained(
            model, ids, mask, SidTrieLogitsProcessor(trie, roots, eos, pad), config),
        "naive": lambda: model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                        prefix_allowed_tokens_fn=naive_fn),
        "prefill_once": lambda: trie_beam_search(model, ids, mask, trie.tables("cpu"), torch.tensor(roots),
                                                 args.beams, eos),
    }
    times, outputs = time_interleaved(runs, args.repeats)
    inputs = step_inputs(ids, sids, args.beams, model.get_output_embeddings().weight.shape[0], args.seed)
    timers = step_timers(trie, naive_fn, inputs, ids.shape[1], args.beams, eos, pad)
    best = {name: min(t) for name, t in times.items()}
    result = {
        "items": n, "levels": trie.levels, "prompt_tokens": int(ids.shape[1]),
        "unconstrained_s": round(best["unconstrained"], 3), "constrained_s": round(best["constrained"], 3),
        "naive_s": round(best["naive"], 3), "prefill_once_s": round(best["prefill_once"], 3),
        "overhead_ratio": round(best["constrained"] / best["unconstrained"], 3),
        "overhead_ratio_paired": round(paired_ratio(times, "constrained", "unconstrained"), 3),
        "naive_overhead_ratio": round(best["naive"] / best["unconstrained"], 3),
        "prefill_once_speedup": round(best["constrained"] / best["prefill_once"], 2),
        "prefill_once_speedup_paired": round(paired_ratio(times, "constrained", "prefill_once"), 2),
        "trie_build_s": round(build_s, 3), "trie_mb": round(trie.nbytes / 2**20, 2),
        "naive_dict_build_s": round(naive_build_s, 3),
        "constrained_valid_rate": valid_rate(outputs["constrained"].sequences[:, ids.shape[1]:], trie, eos),
        "unconstrained_valid_rate": valid_rate(outputs["unconstrained"].sequences[:, ids.shape[1]:], trie, eos),
        "runs_s": {name: [round(t, 3) for t in ts] for name, ts in times.items()},
    }
    log.info("%s", result)
    return result, timers


def valid_rate(generated: torch.Tensor, trie, eos: int) -> float:
    levels, root = trie.levels, trie.root(None)
    ok = [trie.item_of(root, row[:levels]) >= 0 and len(row) > levels and row[levels] == eos
          for row in generated.tolist()]
    return round(sum(ok) / len(ok), 4)


def add_step_metrics(result: dict, steps: dict[str, float]) -> None:
    result.update(steps)
    result["speedup_vs_naive"] = round(steps["naive_ms_per_step"] / steps["processor_ms_per_step"], 1)
    result["logic_speedup_vs_naive"] = round(steps["naive_logic_ms_per_step"] / steps["logic_ms_per_step"], 1)


def summary(first: dict, last: dict) -> dict:
    growth = round(last["processor_ms_per_step"] / first["processor_ms_per_step"], 3)
    logic_growth = round(last["logic_ms_per_step"] / first["logic_ms_per_step"], 3)
    return {
        "overhead_ratio_at_max": last["overhead_ratio"],
        "speedup_vs_naive_at_max": last["speedup_vs_naive"],
        "logic_speedup_vs_naive_at_max": last["logic_speedup_vs_naive"],
        "processor_step_growth_min_to_max": growth, "logic_step_growth_min_to_max": logic_growth,
        "targets": {"overhead_ratio_at_max <= 1.10": last["overhead_ratio"] <= 1.10,
                    "processor_step_growth <= 1.5": growth <= 1.5,
                    "speedup_vs_naive_at_max >= 10": last["speedup_vs_naive"] >= 10},
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args()
    torch.manual_seed(args.seed)
    model, tok = load_model(args)
    with torch.no_grad():  # warm-up: one-time kernel/allocator initialisation stays out of the first timing
        model.generate(**tok(["warm up"], return_tensors="pt"), max_new_tokens=2, num_beams=2, do_sample=False)
    results, timers = {}, {}
    for n in args.sizes:
        results[n], timers[n] = bench_size(n, args, model, tok)
    for n, steps in bench_steps(timers, args.step_rounds).items():
        add_step_metrics(results[n], steps)
    report = {
        "command": "python benchmarks/decoding_bench.py " + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "model": f"{args.model} truncated to {args.num_layers} layers, fp32, CPU",
        "workload": f"{args.batch} users x {args.beams} beams, {args.levels} levels x {args.codebook} codes",
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "load_average_at_end": os.getloadavg()},
        "sizes": {str(n): r for n, r in results.items()},
        **summary(results[args.sizes[0]], results[args.sizes[-1]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "sizes"}, indent=2))


if __name__ == "__main__":
    main()
