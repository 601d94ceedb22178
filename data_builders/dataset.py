"""The canonical dataset every importer produces and every later stage reads.

On disk (one directory, written atomically)::

    dataset/
      items.parquet    item_id, domain, title, brand, categories[], features[], description
      train.parquet    user_id, domain, history[], target, split, timestamp, source_row
      valid.parquet    (same columns)
      test.parquet     (same columns)
      meta.json        source, counts per domain, skipped records, content hashes, command, versions

``history`` holds item ids, oldest first, already truncated to the importer's ``max_history``; ``target`` is the
next item. ``timestamp`` is the target's unix time in seconds, or -1 when the source has none. ``source_row`` is
the row's 0-based position in its source file (-1 for rebuilt rows) so exact published rows can be traced.
Item ids are unique inside a dataset; a merged multi-domain dataset namespaces them as ``<domain>:<id>``.

Load with :func:`load_rec_dataset`; the tables come back as Hugging Face ``datasets.Dataset`` objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from data_builders.cli import UserError, check_output_dir, read_json_file

FORMAT = "genrec-dataset/1"
SPLITS = ("train", "valid", "test")

ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("domain", pa.string()),
        ("title", pa.string()),
        ("brand", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("features", pa.list_(pa.string())),
        ("description", pa.string()),
    ]
)
ROW_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("domain", pa.string()),
        ("history", pa.list_(pa.string())),
        ("target", pa.string()),
        ("split", pa.string()),
        ("timestamp", pa.int64()),
        ("source_row", pa.int64()),
    ]
)


class DataError(UserError):
    """Bad input data. The message names the file, the record (line / row / key) and the problem."""


def data_error(path: str | os.PathLike | None, record: str | int | None, problem: str) -> DataError:
    """Build a :class:`DataError` whose message reads ``<file>, <record>: <problem>``."""
    where = str(path) if path is not None else "<data>"
    if record is not None:
        where += f", {record if isinstance(record, str) else f'line {record}'}"
    return DataError(f"{where}: {problem}")


@dataclass
class Item:
    """One catalogue item. Text fields are plain strings ("" when missing); lists are lists of strings."""

    item_id: str
    domain: str
    title: str = ""
    brand: str = ""
    categories: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class Row:
    """One interaction row: ``history`` (item ids, oldest first) -> ``target``."""

    user_id: str
    domain: str
    history: list[str]
    target: str
    split: str
    timestamp: int = -1
    source_row: int = -1


@dataclass
class BuiltDataset:
    """An importer's output before it is written: items, rows and what the importer wants in ``meta.json``."""

    items: list[Item]
    rows: list[Row]
    source: dict[str, Any]
    skipped: Counter = field(default_factory=Counter)
    extra_files: dict[str, bytes] = field(default_factory=dict)  # e.g. an external SID index, copied verbatim


def validate(built: BuiltDataset) -> None:
    """Check the invariants every stage relies on; raise :class:`DataError` naming the offending record."""
    seen: dict[str, int] = {}
    for i, item in enumerate(built.items):
        if not item.item_id:
            raise data_error(None, f"item #{i}", "empty item_id")
        if item.item_id in seen:
            raise data_error(None, f"item #{i}", f"duplicate item_id {item.item_id!r} (first at #{seen[item.item_id]})")
        seen[item.item_id] = i
    for i, row in enumerate(built.rows):
        where = f"row #{i} (user {row.user_id!r}, split {row.split!r})"
        if row.split not in SPLITS:
            raise data_error(None, where, f"unknown split {row.split!r}; expected one of {SPLITS}")
        if not row.history:
            raise data_error(None, where, "empty history")
        for item_id in [*row.history, row.target]:
            if item_id not in seen:
                raise data_error(None, where, f"unknown item id {item_id!r}")


def cache_root() -> Path:
    """Where conversions and embeddings are cached: ``$GENREC_CACHE`` or ``~/.cache/genrec``."""
    return Path(os.environ.get("GENREC_CACHE", Path.home() / ".cache" / "genrec"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape artifacts (recorded in every ``meta.json``)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("numpy", "pyarrow", "datasets", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue  # not installed: nothing to record
    return out


def atomic_dir(final: str | os.PathLike) -> "AtomicDir":
    """Context manager: write into a temp dir beside ``final``; on success swap it in, on error delete it."""
    return AtomicDir(Path(final))


class AtomicDir:
    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")

    def __enter__(self) -> Path:
        check_output_dir(self.final)  # an existing *file* there is refused; stale temps of dead runs removed
        self.final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or _same_tree(self.tmp, self.final):
            # On error: nothing half-written survives. Unchanged content: the old directory (and its mtimes,
            # which `make` reads to decide what to rebuild) stays.
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        shutil.rmtree(old, ignore_errors=True)


def _same_tree(a: Path, b: Path) -> bool:
    """True if directories ``a`` and ``b`` hold the same relative file paths with byte-identical content."""
    if not b.is_dir():
        return False
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Deterministic JSON (sorted keys, UTF-8, trailing newline), written via a temp file and rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_parquet(records: Iterable[Any], schema: pa.Schema, path: Path) -> None:
    table = pa.Table.from_pylist([r.__dict__ for r in records], schema=schema)
    # zstd keeps the embedded dataset small; no statistics/timestamps that could vary between runs.
    pq.write_table(table, path, compression="zstd", write_statistics=False)


def domain_counts(items: list[Item], rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Per-domain users, items, rows per split and text coverage (share of items with each field)."""
    out: dict[str, dict[str, Any]] = {}
    for domain in sorted({i.domain for i in items} | {r.domain for r in rows}):
        d_items = [i for i in items if i.domain == domain]
        d_rows = [r for r in rows if r.domain == domain]
        n = max(len(d_items), 1)
        out[domain] = {
            "items": len(d_items),
            "users": len({r.user_id for r in d_rows}),
            "rows": {s: sum(r.split == s for r in d_rows) for s in SPLITS},
            "users_per_split": {s: len({r.user_id for r in d_rows if r.split == s}) for s in SPLITS},
            "text_coverage": {
                f: round(sum(bool(getattr(i, f)) for i in d_items) / n, 4)
                for f in ("title", "brand", "categories", "features", "description")
            },
        }
    return out


def write_rec_dataset(built: BuiltDataset, out_dir: str | os.PathLike, config: dict[str, Any] | None = None) -> dict:
    """Validate ``built`` and write it to ``out_dir`` atomically. Returns the ``meta.json`` content."""
    validate(built)
    with atomic_dir(out_dir) as tmp:
        _write_parquet(built.items, ITEM_SCHEMA, tmp / "items.parquet")
        for split in SPLITS:
            _write_parquet((r for r in built.rows if r.split == split), ROW_SCHEMA, tmp / f"{split}.parquet")
        for name, payload in sorted(built.extra_files.items()):
            (tmp / name).write_bytes(payload)
        files = sorted(p.name for p in tmp.iterdir())
        hashes = {name: sha256_file(tmp / name) for name in files}
        meta = {
            "format": FORMAT,
            "source": built.source,
            "domains": domain_counts(built.items, built.rows),
            "totals": {"items": len(built.items), **{s: sum(r.split == s for r in built.rows) for s in SPLITS}},
            "skipped": dict(sorted(built.skipped.items())),
            "content_hashes": hashes,
            "dataset_hash": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
            "command": " ".join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:]]),
            "config": config or {},
            "versions": library_versions(),
        }
        write_json(tmp / "meta.json", meta)
    return meta


@dataclass
class RecDataset:
    """A loaded dataset: ``items`` and ``splits[name]`` are ``datasets.Dataset`` tables; ``meta`` is meta.json."""

    path: Path
    items: Any
    splits: dict[str, Any]
    meta: dict[str, Any]

    @property
    def item_ids(self) -> list[str]:
        return self.items["item_id"]

    def item_index(self) -> dict[str, int]:
        """item_id -> row in ``items`` (also the row in the embeddings matrix)."""
        return {item_id: i for i, item_id in enumerate(self.items["item_id"])}

    @property
    def dataset_hash(self) -> str:
        return self.meta["dataset_hash"]


def read_artifact_meta(path: str | os.PathLike, fmt: str, what: str, how: str) -> dict[str, Any]:
    """``<path>/meta.json`` of an artifact, checked to be of format ``fmt``; clear errors otherwise.

    ``what`` names the artifact ("a dataset directory"), ``how`` the command that builds one.
    """
    meta_path = Path(path) / "meta.json"
    if not meta_path.exists():
        raise DataError(f"{path}: not {what} (no meta.json); build one with `{how}`")
    meta = read_json_file(meta_path, f"{what}'s meta.json")
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        meta = meta if isinstance(meta, dict) else {}
        raise DataError(f"{meta_path}: unsupported format {meta.get('format')!r}; expected {fmt!r}")
    return meta


def load_rec_dataset(path: str | os.PathLike) -> RecDataset:
    """Load a dataset directory written by :func:`write_rec_dataset`."""
    import datasets

    path = Path(path)
    meta = read_artifact_meta(path, FORMAT, "a dataset directory", "python -m data_builders.build")
    items = datasets.Dataset(pq.read_table(path / "items.parquet"))
    splits = {s: datasets.Dataset(pq.read_table(path / f"{s}.parquet")) for s in SPLITS}
    return RecDataset(path=path, items=items, splits=splits, meta=meta)
