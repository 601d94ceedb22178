"""``report.md`` and PNG plots from a ``metrics.json`` (see eval/run.py for its layout).

    python -m eval.report --metrics artifacts/amazon18/eval/metrics.json     # re-render the report in place
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from data_builders.cli import UserError, read_json_file  # noqa: E402
from eval.evaluate import reference_k  # noqa: E402

FORMAT = "genrec-eval/1"


def load_metrics(path: str | Path, dataset_hash: str | None = None, split: str | None = None) -> dict[str, Any]:
    """Read a ``metrics.json``; with ``dataset_hash`` / ``split``, refuse one computed on other data."""
    path = Path(path)
    metrics = read_json_file(path, "metrics file")
    if not isinstance(metrics, dict) or metrics.get("format") != FORMAT:
        got = metrics.get("format") if isinstance(metrics, dict) else type(metrics).__name__
        raise UserError(f"{path}: not an eval metrics file (format {got!r}, expected {FORMAT!r})")
    if dataset_hash is not None and metrics["dataset_hash"] != dataset_hash:
        raise UserError(f"{path}: computed on dataset {metrics['dataset_hash'][:12]} ({metrics['dataset']}), "
                         f"not on this dataset {dataset_hash[:12]}; numbers from different data cannot share a table")
    if split is not None and metrics["split"] != split:
        raise UserError(f"{path}: computed on split {metrics['split']!r}, not {split!r}")
    return metrics


def method_names(metrics: dict) -> list[str]:
    """Methods in run order (JSON files sort their keys, so the order is stored separately)."""
    return metrics.get("method_order") or list(metrics["methods"])


def slice_names(metrics: dict) -> list[str]:
    first = next(iter(metrics["slices"].values()), {})
    return metrics.get("slice_order") or list(first)


def domain_names(metrics: dict) -> list[str]:
    """Domains of the evaluated rows, "all" last."""
    first = metrics["methods"][method_names(metrics)[0]]
    return sorted(first, key=lambda d: (d == "all", d))


def fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}".lstrip("0") if abs(value) < 1 else f"{value:.{digits}f}"


def report_columns(ks) -> list[str]:
    """HR@K / NDCG@K columns for every evaluated K up to 10 (the published table's range), else the smallest K."""
    ks = sorted(set(ks))
    shown = [k for k in ks if k <= 10] or ks[:1]
    return [f"{m}@{k}" for k in shown for m in ("hr", "ndcg")]


def method_rows(metrics: dict, domain: str) -> list[str]:
    """One markdown row per evaluated method for ``domain`` ("all" = every row)."""
    lines = []
    columns, kref = report_columns(metrics["ks"]), reference_k(metrics["ks"])
    for name in method_names(metrics):
        m = metrics["methods"][name].get(domain)
        if m is None:
            continue
        lat = metrics["latency_ms"].get(name) or {}
        latency = f"{lat['mean_ms']:.2f} / {lat['p50_ms']:.2f} / {lat['p95_ms']:.2f}" if lat else "–"
        train_s = (metrics["training"].get(name) or {}).get("seconds")
        cells = [fmt(m.get(c)) for c in columns] + [fmt(m.get(f"coverage@{kref}"), 3), fmt(m["invalid_rate"], 3),
                                                     latency, "–" if train_s is None else f"{train_s:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def published_rows(metrics: dict, domain: str) -> list[str]:
    """The published models' rows for ``domain`` (only where the dataset's meta says the table applies); a column
    the table does not report (e.g. HR@1) shows "–"."""
    columns = report_columns(metrics["ks"])
    label = published_label(metrics, domain)
    return [f"| {model} ({label}) | " + " | ".join(fmt(v.get(c)) for c in columns) + " | – | – | – | – |"
            for model, by_domain in metrics.get("published", {}).items()
            for v in [by_domain.get(domain)] if v is not None]


def published_label(metrics: dict, domain: str) -> str:
    """How ``domain``'s published rows are labelled (from the dataset's metadata); "published" when unstated."""
    return ((metrics.get("published_sources") or {}).get(domain) or {}).get("label") or "published"


def published_setup_lines(m: dict) -> list[str]:
    """One line per domain whose published rows the report shows: where they come from and what trained them."""
    sources = m.get("published_sources") or {}
    domains = sorted({d for by_domain in m.get("published", {}).values() for d in by_domain})
    if not domains:
        return ["- No published rows: the dataset's metadata carries none (an importer records "
                "`<domain>.published.json` from beside the test file; see data_builders/published.py)."]
    return [f"- Published rows for {d}: {(sources.get(d) or {}).get('source') or 'source not recorded'}; "
            f"labelled \"{published_label(m, d)}\"" + (f"; {sources[d]['protocol']}" if (sources.get(d) or {})
                                                      .get("protocol") else "") + "." for d in domains]


def results_table(metrics: dict, domain: str) -> str:
    columns = report_columns(metrics["ks"])
    head = ("| method | " + " | ".join(c.upper() for c in columns)
            + f" | coverage@{reference_k(metrics['ks'])} | invalid | latency ms/user (mean / p50 / p95) | train s |")
    sep = "|" + "---|" * (len(columns) + 5)
    return "\n".join([head, sep, *method_rows(metrics, domain), *published_rows(metrics, domain)])


def protocol(train_splits) -> str:
    """Which rows trained the models: the published protocol (train windows only) or all prior data."""
    splits = list(train_splits)
    if splits == ["train"]:
        return "published protocol (train windows only)"
    if sorted(splits) == ["train", "valid"]:
        return "all prior data (train windows + valid rows)"
    return f"trained on {splits}"


def protocol_tag(train_splits) -> str:
    """Short protocol label for a row's name: "train only" (the published protocol), "train + valid", ..."""
    splits = list(train_splits)
    return "train only" if splits == ["train"] else " + ".join(splits)


def per_user_table(metrics: dict) -> str:
    k = reference_k(metrics["ks"])
    lines = [f"| method | domain | HR@{k} per row | HR@{k} per user | NDCG@{k} per row | NDCG@{k} per user | users |",
             "|---|---|---|---|---|---|---|"]
    for name in method_names(metrics):
        for dom in domain_names(metrics):
            m, u = metrics["methods"][name][dom], metrics["per_user"][name][dom]
            lines.append(f"| {name} | {dom} | {fmt(m[f'hr@{k}'])} | {fmt(u[f'hr@{k}'])} | {fmt(m[f'ndcg@{k}'])} | "
                         f"{fmt(u[f'ndcg@{k}'])} | {u['users']} |")
    return "\n".join(lines)


def slice_table(metrics: dict) -> str:
    names, methods, k = slice_names(metrics), method_names(metrics), reference_k(metrics["ks"])
    lines = ["| method | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for method in methods:
        cells = [(metrics["slices"].get(method) or {}).get(n, {}).get(f"hr@{k}") for n in names]
        lines.append(f"| {method} | " + " | ".join(fmt(c) for c in cells) + " |")
    if names:
        lines.append("| rows | " + " | ".join(str(metrics["slices"][methods[0]][n]["rows"]) for n in names) + " |")
    return "\n".join(lines)


def top_published(metrics: dict, domain: str, ks: tuple[int, ...], n: int = 3) -> list[tuple[str, dict]]:
    """The ``n`` published models with the best HR@max(ks) on ``domain`` that report HR at every K of ``ks`` (the
    evaluated Ks must include them too)."""
    if not all(k in metrics["ks"] for k in ks):
        return []
    rows = [(model, by_domain[domain]) for model, by_domain in metrics.get("published", {}).items()
            if domain in by_domain and all(f"hr@{k}" in by_domain[domain] for k in ks)]
    return sorted(rows, key=lambda r: -r[1][f"hr@{max(ks)}"])[:n]


def plot_hr_curves(metrics: dict, path: Path) -> None:
    """HR@K against K per method, one panel per domain; published HR@3/5/10 as hollow markers."""
    domains = domain_names(metrics)
    fig, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 4.6), squeeze=False)
    ks = metrics["ks"]
    for ax, dom in zip(axes[0], domains):
        for name in method_names(metrics):
            ax.plot(ks, [metrics["methods"][name][dom][f"hr@{k}"] for k in ks], marker="o", label=name)
        for model, values in top_published(metrics, dom, (3, 5, 10)):
            ax.plot([3, 5, 10], [values[f"hr@{k}"] for k in (3, 5, 10)], linestyle="--",
                    marker="s", markerfacecolor="none", alpha=0.6, label=f"{model} (published)")
        ax.set(title=dom, xlabel="K", ylabel="HR@K", xticks=ks)
        ax.grid(alpha=0.3)
    handles = max((ax.get_legend_handles_labels() for ax in axes[0]), key=lambda hl: len(hl[1]))
    fig.legend(*handles, loc="lower center", ncol=min(len(handles[1]), 7), fontsize=8)
    labels = sorted({published_label(metrics, d) for d in domains if any(d in v for v in
                                                                        metrics.get("published", {}).values())})
    fig.suptitle(f"HR@K on {metrics['split']} rows" + (f" (published rows: {'; '.join(labels)})" if labels else ""),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_slices(metrics: dict, path: Path) -> None:
    """Grouped bars: HR@10 per slice (x) and method (colour)."""
    methods, names, k = method_names(metrics), slice_names(metrics), reference_k(metrics["ks"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        values = [(metrics["slices"].get(method) or {}).get(n, {}).get(f"hr@{k}") for n in names]
        values = [float("nan") if v is None else v for v in values]
        ax.bar([i + j * width for i in range(len(names))], values, width, label=method)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel=f"HR@{k}", title=f"HR@{k} by slice ({metrics['split']} rows)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def setup_text(m: dict) -> str:
    rule, kref = m["rules"], reference_k(m["ks"])
    notes = m.get("dataset_notes")
    if notes is None:  # metrics written before dataset notes were recorded: the embedded data's note
        notes = ["the `train` split is the leak-free reconstruction of the training windows (the original "
                 "train.csv is not public)"]
    published = m.get("published")
    return "\n".join([
        f"- Dataset `{m['dataset']}` (hash `{m['dataset_hash'][:12]}`), evaluated split **{m['split']}** "
        f"({m['eval_rows']} rows{sample_note(m)}), full-catalogue ranking within the row's domain: {rule['same_domain']}.",
        f"- **Protocol: {protocol(m['train_splits'])}** — splits {m['train_splits']} = {m['train_rows']} rows.",
        *[f"- Data: {n}." for n in notes],
        *([f"- Published models: trained as their protocol line below says; the rows above on {m['train_rows']} rows "
           f"({protocol(m['train_splits'])})."] if published else []),
        *([f"- Rows marked `[{protocol_tag(s)}]` come from another run trained on {s} "
           f"({protocol(s)}): {', '.join(n for n, t in m['other_protocols'].items() if t == s)}."
           for s in unique_splits(m.get("other_protocols", {}))]),
        f"- coverage@{kref}: share of the domain's catalogue that appears in at least one top-{kref} list.",
        *([history_note(m)] if m.get("history_len") else []),
        f"- History items excluded from recommendations: {rule['exclude_history']} (same rule for every method).",
        f"- {rule['ranking']}",
        f"- Averaging: {rule['averaging']}. Latency: {rule['latency']}.",
        *published_setup_lines(m),
    ])


def history_note(m: dict) -> str:
    kept = m.get("dataset_max_history")
    return (f"- History: the sequence models see the newest {m['history_len']} items of each row (`history_len`"
            + (f"; the dataset kept up to {kept}" if kept else "") + "); what each method saw is in the Training "
            "table's `history` column.")


def unique_splits(by_method: dict[str, list[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    for splits in by_method.values():
        if splits not in out:
            out.append(splits)
    return out


def write_report(metrics: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``hr_at_k.png``, ``slices.png`` and, when generative rows carry them, ``training_curves.png``
    and ``sid_quality.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "hr_curve": out / "hr_at_k.png", "slices": out / "slices.png"}
    plot_hr_curves(metrics, paths["hr_curve"])
    plot_slices(metrics, paths["slices"])
    stages, sids = training_stages(metrics), sid_reports(metrics)
    made = []  # how the generative rows were made, when the run has any
    if stages:
        paths["training_curves"] = out / "training_curves.png"
        plot_training_curves(stages, paths["training_curves"])
        made += ["## Training curves (generative rows)", "", curves_table(stages), "",
                 "![training curves](training_curves.png)", ""]
    if sids:
        paths["sid_quality"] = out / "sid_quality.png"
        plot_sid_quality(sids, paths["sid_quality"])
        made += ["## SID quality", "", sid_table(sids), "", "![SID quality](sid_quality.png)", ""]
    parts = [f"# Evaluation on {metrics['split']} rows — {protocol(metrics['train_splits'])}", "",
             setup_text(metrics), ""]
    for dom in domain_names(metrics):
        parts += [f"## {dom}", "", results_table(metrics, dom), ""]
    if max(metrics["ks"]) > 10 and 10 in metrics["ks"]:
        parts += [f"## Recall@10 / @{max(metrics['ks'])} and NDCG@10 per domain", "", recall_table(metrics), ""]
    if metrics.get("cross_domain"):
        parts += cross_domain_section(metrics["cross_domain"])
    parts += ["## Per-row vs per-user averaging", "", per_user_table(metrics), "",
              "## HR@10 by slice", "", slice_table(metrics), "",
              "## Training", "", training_table(metrics), "", *made,
              "## Plots", "", "![HR@K](hr_at_k.png)", "", "![slices](slices.png)", "",
              "## Reproduce", "", "```", *([metrics["dataset_command"]] if metrics.get("dataset_command") else []),
              metrics["command"], "```", "",
              f"Seeds: {json.dumps(metrics['seeds'])}. Library versions: {json.dumps(metrics['versions'])}.", ""]
    paths["report"].write_text("\n".join(parts), encoding="utf-8")
    return paths


def training_table(metrics: dict) -> str:
    """Fit time, loss and memory per method; params/user = numbers generated per user (the dense morphs: 2dr or
    d²; "–" for methods that do not report it); peak RSS = the process's peak while fitting."""
    lines = ["| method | train s | examples | epochs | final loss | peak RSS MB | params/user | history | s/epoch "
             "| notes |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in method_names(metrics):
        t = metrics["training"].get(name) or {}
        losses = t.get("epoch_losses") or []
        notes = "; ".join([*([f"alpha={t['alpha']}"] if "alpha" in t else []),
                           *(["stopped by its time budget"] if t.get("stopped_by_time_budget") else [])])
        lines.append(f"| {name} | {t.get('seconds', 0):.1f} | {t.get('examples', '–')} | {len(losses) or '–'} | "
                     f"{losses[-1] if losses else '–'} | {t.get('peak_rss_mb', '–')} | {t.get('params_per_user', '–')} "
                     f"| {t.get('history', '–')} | {t.get('epoch_seconds', '–')} | {notes} |")
    return "\n".join(lines)


def recall_table(metrics: dict) -> str:
    """Recall@10, Recall@K_max and NDCG@10 per domain (one target per row: Recall@K = HR@K)."""
    kmax, domains = max(metrics["ks"]), domain_names(metrics)
    head = "| method | " + " | ".join(f"{d} R@10 | {d} R@{kmax} | {d} NDCG@10" for d in domains) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(domains))]
    for name in method_names(metrics):
        m = metrics["methods"][name]
        cells = [fmt(m[d].get(key)) for d in domains for key in ("hr@10", f"hr@{kmax}", "ndcg@10")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_note(m: dict) -> str:
    """", a seeded sample of the split's N rows" when only part of the split was evaluated."""
    total = m.get("split_rows", m["eval_rows"])
    return "" if total == m["eval_rows"] else f", a seeded sample of the split's {total} rows"


def main(argv: list[str] | None = None) -> int:
    """The CLI: exit 0, or 2 with one ``error:`` line for a missing / corrupt / mismatched input."""
    from data_builders.cli import run_cli

    return run_cli(_main, argv, prog="report")


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.report",
                                     description="Re-render report.md and plots from a metrics.json")
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--output_dir", default=None, help="default: the metrics file's folder")
    parser.add_argument("--cross_domain_results", default=None,
                        help="benchmarks/cross_domain_bench.py's JSON: (re)place the report's cross-domain section")
    args = parser.parse_args(argv)
    metrics = load_metrics(args.metrics)
    if args.cross_domain_results:
        from eval.run import load_cross_domain

        metrics["cross_domain"] = load_cross_domain(args.cross_domain_results, metrics["dataset_hash"],
                                                    metrics["split"])
    paths = write_report(metrics, args.output_dir or Path(args.metrics).parent)
    print(f"wrote {paths['report']}")



# --- how the generative rows were made: training curves and SID quality ---------------------------------------------

LOSS_KEYS = ("loss", "eval_loss")
VALID_KEYS = ("eval_ndcg@10", "valid_ndcg@10")


def training_stages(metrics: dict) -> list[dict]:
    """Every training stage behind the report's rows, once each, first stage first: ``{"checkpoint", "stage",
    "series", "methods"}`` (``methods``: the rows that decode that checkpoint or one trained from it)."""
    stages: dict[str, dict] = {}
    for name in method_names(metrics):
        for stage in (metrics["training"].get(name) or {}).get("curves") or []:
            entry = stages.setdefault(stage["checkpoint"], {**stage, "methods": []})
            entry["methods"].append(name)
    return list(stages.values())


def stage_label(stage: dict) -> str:
    return f"{stage['stage'].upper() if stage['stage'] == 'sft' else 'RL ' + stage['stage']} ({Path(stage['checkpoint']).name})"


def curves_table(stages: list[dict]) -> str:
    """Per stage: steps, train loss first → last, the best valid NDCG@10 and its step, the last RL signals."""
    lines = ["| stage | rows | steps | train loss first → last | best valid NDCG@10 (step) | last reward / KL / "
             "margin |", "|---|---|---|---|---|---|"]
    for st in stages:
        s = st["series"]
        loss = s.get("loss") or []
        valid = next((s[k] for k in VALID_KEYS if s.get(k)), [])
        best = max(valid, key=lambda p: p[1]) if valid else None
        steps = max((p[0] for series in s.values() for p in series), default=0)
        rl = [fmt(s[k][-1][1], 3) if s.get(k) else "–" for k in ("reward", "kl", "rewards/margins")]
        lines.append(f"| {stage_label(st)} | {', '.join(st['methods'])} | {int(steps)} | "
                     + (f"{fmt(loss[0][1], 3)} → {fmt(loss[-1][1], 3)}" if loss else "–") + " | "
                     + (f"{fmt(best[1])} ({int(best[0])})" if best else "–") + f" | {' / '.join(rl)} |")
    return "\n".join(lines)


def plot_training_curves(stages: list[dict], path: Path) -> None:
    """One column per stage: losses; RL signals (reward, KL, DPO's implicit rewards and margin); valid NDCG@10."""
    from eval.curves import SERIES

    fig, axes = plt.subplots(3, len(stages), figsize=(4.8 * len(stages), 8), squeeze=False)
    for col, st in zip(axes.T, stages):
        s = st["series"]
        groups = (LOSS_KEYS, tuple(k for k in SERIES if k not in LOSS_KEYS + VALID_KEYS), VALID_KEYS)
        for ax, keys, ylabel in zip(col, groups, ("loss", "RL signal", "valid NDCG@10")):
            drawn = [k for k in keys if s.get(k)]
            for k in drawn:
                ax.plot([p[0] for p in s[k]], [p[1] for p in s[k]], marker="o" if len(s[k]) < 30 else None,
                        markersize=3, label=SERIES[k])
            if drawn:
                ax.legend(fontsize=7)
                ax.grid(alpha=0.3)
                ax.set(ylabel=ylabel, xlabel="step")
            else:
                ax.axis("off")
        col[0].set_title(stage_label(st), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sid_reports(metrics: dict) -> list[dict]:
    """The SID artifacts behind the generative rows, once each: the quality summary plus the rows using it."""
    out: dict[str, dict] = {}
    for name in method_names(metrics):
        q = (metrics["training"].get(name) or {}).get("sid_quality")
        if q:
            out.setdefault(q["sid_dir"], {**q, "methods": []})["methods"].append(name)
    return list(out.values())


def sid_table(reports: list[dict]) -> str:
    """Per artifact and level: utilisation (codes used / codebook size), entropy / max (bits), Gini, top-k share; collision rate."""
    lines = ["| SIDs | rows | items | level | utilisation | entropy / max bits | Gini | top-k share | collisions "
             "before → after |", "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        before, after = r.get("collisions_before") or {}, r.get("collisions_after") or {}
        coll = f"{fmt(before.get('collision_rate'), 3)} → {fmt(after.get('collision_rate'), 3)}"
        for i, level in enumerate(r["levels"]):
            lines.append(f"| {Path(r['sid_dir']).name if i == 0 else ''} | {', '.join(r['methods']) if i == 0 else ''}"
                         f" | {r['n_items'] if i == 0 else ''} | {i + 1} | {fmt(level.get('utilization'), 3)} | "
                         f"{fmt(level.get('entropy'), 2)} / {fmt(level.get('max_entropy'), 2)} | "
                         f"{fmt(level.get('gini'), 3)} | {fmt(level.get('top_k_share'), 3)} | "
                         f"{coll if i == 0 else ''} |")
    return "\n".join(lines)


def plot_sid_quality(reports: list[dict], path: Path) -> None:
    """Per level and artifact: codebook utilisation and normalised entropy (1 = uniform code use)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    width = 0.8 / max(len(reports), 1)
    for j, r in enumerate(reports):
        x = [i + j * width for i in range(len(r["levels"]))]
        axes[0].bar(x, [lv.get("utilization", 0) for lv in r["levels"]], width, label=Path(r["sid_dir"]).name)
        axes[1].bar(x, [lv["entropy"] / lv["max_entropy"] if lv.get("max_entropy") else 0 for lv in r["levels"]],
                    width, label=Path(r["sid_dir"]).name)
    levels = max(len(r["levels"]) for r in reports)
    for ax, title in zip(axes, ("codebook utilisation", "entropy / maximum")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(levels)], [f"level {i + 1}" for i in range(levels)])
        ax.set(ylim=(0, 1.05), title=title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the cross-domain benchmark (benchmarks/cross_domain_bench.py), shown beside the run -----------------------------


def _pair(values: dict | None, domains: list[str], digits: int = 4) -> str:
    if not values:
        return "–"
    return " / ".join(fmt(values.get(d), digits) for d in domains)


def cross_domain_section(cd: dict) -> list[str]:
    """The GenCDR comparison: every variant's NDCG@10 / HR@10 per domain (mean over its seeds), seed spread, the
    gain of gencdr over each baseline against that spread, CPU minutes, mean router α, and the ablation drops beside
    the paper's."""
    domains = list(cd.get("domains") or next(iter(cd["variants"].values())))
    domains = [d for d in domains if d != "all"]
    short = " / ".join(d.split("_")[0] for d in domains)
    lines = ["## Cross-domain (GenCDR, seed 001)", "",
             f"From `{cd.get('path', 'benchmarks/results/cross_domain.json')}` ({cd.get('command', '')}): every model "
             f"trained on {' + '.join(cd.get('train_splits', []))} rows with `{cd.get('train_config', '')}`, scored on "
             f"the same {cd.get('eval_rows', '?')} {cd.get('split', 'test')} rows as this report (same catalogue and "
             f"rules). Values are `{short}`; NDCG@10 and HR@10 are the mean over the seeds listed.", "",
             f"| variant | what | seeds | NDCG@10 | HR@10 | NDCG@10 seed spread | train CPU min | decode CPU min "
             f"| mean α |", "|---|---|---|---|---|---|---|---|---|"]
    for name, by_domain in cd["variants"].items():
        run = (cd.get("runs") or {}).get(name, {})
        cpu = (cd.get("cpu_minutes") or {}).get(name) or {}
        spread = (cd.get("spread") or {}).get(name)
        lines.append(
            f"| {name} | {run.get('description', '')} | {len(run.get('seeds', [])) or '?'} | "
            f"{_pair({d: by_domain[d]['ndcg@10'] for d in domains}, domains)} | "
            f"{_pair({d: by_domain[d]['hr@10'] for d in domains}, domains)} | "
            f"{_pair({d: spread[d]['ndcg@10'] for d in domains} if spread else None, domains)} | "
            f"{fmt(cpu.get('train'), 1) if cpu.get('train') is not None else '–'} | "
            f"{fmt(cpu.get('recommend'), 1) if cpu.get('recommend') is not None else '–'} | "
            f"{_pair((cd.get('alpha_mean') or {}).get(name), domains, 3)} |")
    claims = cd.get("claims") or {}
    if claims:
        lines += ["", "gencdr − baseline, NDCG@10 (relative), against the larger seed spread of the two:", ""]
        for base, per in claims.items():
            cells = []
            for d in domains:
                c = per[d]
                verdict = {True: "beats", False: "within noise or worse", None: "one seed"}[c["beats"]]
                cells.append(f"{d.split('_')[0]} {c['gain']:+.4f} ({100 * c['relative']:+.1f}%, spread "
                             f"{fmt(c['seed_spread'])}: {verdict})")
            lines.append(f"- vs `{base}`: " + "; ".join(cells))
    abl = cd.get("ablations") or {}
    if abl:
        lines += ["", "NDCG@10 change when a part is removed (vs gencdr on the same seeds; mean of the two domains; the "
                      "paper's: mean of its four domains):", "",
                  "| ablation | variant | seeds | ours | paper |", "|---|---|---|---|---|"]
        for label, x in abl.items():
            lines.append(f"| {label} | {x['variant']} | {', '.join(map(str, x['seeds']))} | "
                         f"{x['ours_change_pct']:+.1f}% | {x['paper_change_pct']:+.1f}% |")
    for name, share in (cd.get("invalid_beam_share") or {}).items():
        lines += ["", f"`{name}`: {100 * share:.2f}% of the beams decoded to a SID that is no item (dropped; the list "
                      "is shorter)."]
    sel = cd.get("selection") or {}
    if sel.get("variants"):
        cells = ", ".join(f"{n} {fmt(m['all']['ndcg@10'])}" for n, m in sel["variants"].items())
        lines += ["", f"Selected on valid rows (models trained on {' + '.join(sel.get('train_splits', []))} rows, seed "
                      f"{sel.get('seed')}; `{sel.get('command', '')}`), NDCG@10 of all rows: {cells} -> domain-LoRA "
                      f"epochs {sel.get('chosen_domain_epochs')} ({sel.get('rule', '')})."]
    if cd.get("conclusion"):
        lines += ["", cd["conclusion"]]
    lines += ["", "```", cd.get("command", "python benchmarks/cross_domain_bench.py"), "```", ""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
