"""Build the canonical dataset and the item embeddings, then print a per-domain summary.

    python -m data_builders.build --config configs/data/amazon18.yaml [--output_dir DIR] [--skip_embeddings true]

Config keys are the fields of :class:`DataBuildArgs` (strict: an unknown key is an error); CLI flags override them.
Writes ``<output_dir>/dataset/`` and ``<output_dir>/embeddings/`` (see data_builders/dataset.py, embeddings.py).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_builders.cli import check, check_choice, check_output_dir, check_range, parse_config, require_dir, run_cli
from data_builders.dataset import BuiltDataset, DataError, load_rec_dataset, write_rec_dataset

SOURCES = ("minionerec", "lcrec", "amazon2018", "amazon2023")


@dataclass
class DataBuildArgs:
    source: str = field(default="minionerec", metadata={"help": f"input format, one of {SOURCES}"})
    data_dir: str = field(default="data/amazon18", metadata={"help": "folder with the source files"})
    domains: list[str] = field(
        default_factory=lambda: ["Industrial_and_Scientific", "Office_Products"],
        metadata={"help": "domain names (file-name prefixes); several are merged with ids namespaced <domain>:<id>"},
    )
    output_dir: str = field(default="artifacts/amazon18", metadata={"help": "writes dataset/ and embeddings/ here"})
    max_history: int = field(default=10, metadata={"help": "items kept in each (rebuilt) history window"})
    # Raw Amazon reviews only.
    reviews_file: str = field(default="{domain}.jsonl.gz", metadata={"help": "reviews file pattern in data_dir"})
    meta_file: str = field(default="meta_{domain}.jsonl.gz", metadata={"help": "metadata file pattern in data_dir"})
    k_core: int = field(default=5, metadata={"help": "keep users and items with >= k interactions (iterated)"})
    start: str | None = field(default=None, metadata={"help": "time window start (YYYY-MM-DD or unix seconds)"})
    end: str | None = field(default=None, metadata={"help": "time window end, exclusive"})
    split: str = field(default="leave_one_out", metadata={"help": "leave_one_out | temporal (8:1:1 by target time)"})
    # Embeddings.
    encoder: str = field(default="embedded:all-minilm-l6-v2", metadata={"help": "embedded encoder or local path"})
    text_max_tokens: int | None = field(default=None, metadata={"help": "serialised text budget; None = encoder max"})
    embed_batch_size: int = field(default=64, metadata={"help": "texts per encoder forward"})
    skip_embeddings: bool = field(default=False, metadata={"help": "build the dataset only"})
    show_progress: bool = field(default=True, metadata={"help": "tqdm progress bars"})


def import_domain(args: DataBuildArgs, domain: str) -> BuiltDataset:
    """Run the configured importer for one domain."""
    root = Path(args.data_dir)
    folder = root / domain if (root / domain).is_dir() else root
    if args.source == "minionerec":
        from data_builders.minionerec import import_minionerec

        return import_minionerec(folder, domain, max_history=args.max_history)
    if args.source == "lcrec":
        from data_builders.lcrec import import_lcrec

        return import_lcrec(folder, domain, max_history=args.max_history)
    if args.source in ("amazon2018", "amazon2023"):
        from data_builders.amazon_reviews import import_amazon_reviews

        return import_amazon_reviews(
            reviews=folder / args.reviews_file.format(domain=domain), meta=folder / args.meta_file.format(domain=domain),
            domain=domain, version=args.source[-4:], k_core=args.k_core, start=args.start, end=args.end,
            split=args.split, max_history=args.max_history, show_progress=args.show_progress,
        )
    raise DataError(f"unknown source {args.source!r}; expected one of {SOURCES}")


def check_args(args: DataBuildArgs) -> None:
    """Every setting and input checked before anything is read or written (a bad encoder used to be found only
    after dataset/ was written)."""
    check_choice("source", args.source, SOURCES)
    check_choice("split", args.split, ("leave_one_out", "temporal"))
    check(args.domains, "domains", "is empty; name at least one domain")
    check(len(set(args.domains)) == len(args.domains), "domains", f"has duplicates: {args.domains}")
    check_range("max_history", args.max_history, 1)
    check_range("k_core", args.k_core, 1)
    check_range("embed_batch_size", args.embed_batch_size, 1)
    check_range("text_max_tokens", args.text_max_tokens, 1, allow_none=True)
    if args.source in ("amazon2018", "amazon2023"):
        from data_builders.amazon_reviews import parse_time_bound

        bounds = [parse_time_bound(getattr(args, name), name) for name in ("start", "end")]
        if None not in bounds:
            check(bounds[0] < bounds[1], "start", f"{args.start!r} is not before end={args.end!r}")
    require_dir(args.data_dir, "data_dir")
    if not args.skip_embeddings:
        from data_builders.embeddings import resolve_encoder_path

        resolve_encoder_path(args.encoder)
    check_output_dir(Path(args.output_dir) / "dataset", "dataset output")
    check_output_dir(Path(args.output_dir) / "embeddings", "embeddings output")


def build_dataset(args: DataBuildArgs) -> Path:
    """Import every domain, merge when there are several, write ``<output_dir>/dataset``."""
    from data_builders.merge import merge_datasets

    if not args.domains:
        raise DataError("config: `domains` is empty; name at least one domain")
    parts = [import_domain(args, d) for d in args.domains]
    built = parts[0] if len(parts) == 1 else merge_datasets(parts)
    out = Path(args.output_dir) / "dataset"
    write_rec_dataset(built, out, config=asdict(args))
    return out


def format_summary(dataset, emb_meta: dict | None, seconds: dict[str, float]) -> str:
    """One screen: per-domain users, items, rows per split, text coverage; embedding shape."""
    cov_fields = ("title", "brand", "categories", "features", "description")
    head = f"{'domain':<28}{'users':>7}{'items':>7}{'train':>8}{'valid':>7}{'test':>7}   text coverage"
    lines = [f"dataset     {dataset.path}  (hash {dataset.dataset_hash[:12]}, {seconds['dataset']:.1f} s)", head]
    for domain, c in dataset.meta["domains"].items():
        cov = " ".join(f"{f[:5]} {c['text_coverage'][f]:.0%}" for f in cov_fields)
        r = c["rows"]
        lines.append(f"{domain:<28}{c['users']:>7}{c['items']:>7}{r['train']:>8}{r['valid']:>7}{r['test']:>7}   {cov}")
    if dataset.meta["skipped"]:
        lines.append("skipped     " + ", ".join(f"{k}={v}" for k, v in dataset.meta["skipped"].items()))
    if emb_meta:
        hit = "cache hit" if emb_meta["cache_hit"] else "computed"
        lines.append(
            f"embeddings  {emb_meta['path']}  shape [{emb_meta['n_items']}, {emb_meta['dim']}] float32, unit norm, "
            f"{emb_meta['encoder']} ({hit}, {seconds['embeddings']:.1f} s)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0, or 2 with one ``error: <where>: <problem>`` line for a user error (data_builders/cli.py)."""
    return run_cli(_main, argv)


def _main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = parse_config((DataBuildArgs,), argv)
    check_args(args)
    seconds = {}
    t0 = time.perf_counter()
    dataset = load_rec_dataset(build_dataset(args))
    seconds["dataset"] = time.perf_counter() - t0
    emb_meta = None
    if not args.skip_embeddings:
        from data_builders.embeddings import build_item_embeddings

        t0 = time.perf_counter()
        out = Path(args.output_dir) / "embeddings"
        emb_meta = build_item_embeddings(dataset, out, args.encoder, args.text_max_tokens,
                                         args.embed_batch_size, show_progress=args.show_progress)
        emb_meta["path"] = str(out)
        seconds["embeddings"] = time.perf_counter() - t0
    print(format_summary(dataset, emb_meta, seconds))


if __name__ == "__main__":
    sys.exit(main())
