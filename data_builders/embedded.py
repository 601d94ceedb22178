"""The embedded dataset: compact copies of the two Amazon 2018 domains shipped in the repo (``data/amazon18``).

The files are the MiniOneRec release files from ``../shared/datasets/amazon18`` gzipped deterministically
(mtime 0, no file name in the header), byte for byte identical after decompression. ``SOURCE.json`` records the
SHA-256 of every original file so a test can prove the published validation/test rows are untouched. Each domain's
``<domain>.published.json`` (published results on its test file, written by hand from the papers; see
:mod:`data_builders.published`) is not in the release: a rebuild keeps the one already in ``dst``.

Rebuild (only needed if the source changes)::

    python -m data_builders.embedded --src ../shared/datasets/amazon18 --dst data/amazon18
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

from data_builders.dataset import atomic_dir, write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = REPO_ROOT / "data" / "amazon18"
DOMAINS = ("Industrial_and_Scientific", "Office_Products")
# info.txt duplicates item.json + the peer SIDs, so it is not shipped.
SUFFIXES = (".item.json", ".valid.csv", ".test.csv", ".minionerec-sid.index.json")


def gzip_deterministic(data: bytes) -> bytes:
    """gzip with a fixed header (no mtime, no name) so the same input gives the same bytes."""
    import io

    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


def pack_amazon18(src: Path, dst: Path) -> dict:
    """Gzip the release files of both domains from ``src`` into ``dst``; return the SOURCE.json content."""
    record = {"source": "MiniOneRec Amazon 2018 release (../shared/datasets/amazon18)", "files": {}}
    kept = {domain: (dst / domain / f"{domain}.published.json").read_bytes() for domain in DOMAINS
            if (dst / domain / f"{domain}.published.json").is_file()}
    with atomic_dir(dst) as tmp:
        for domain in DOMAINS:
            (tmp / domain).mkdir()
            if domain in kept:
                (tmp / domain / f"{domain}.published.json").write_bytes(kept[domain])
            for suffix in SUFFIXES:
                original = src / domain / f"{domain}{suffix}"
                data = original.read_bytes()
                (tmp / domain / f"{domain}{suffix}.gz").write_bytes(gzip_deterministic(data))
                record["files"][f"{domain}/{domain}{suffix}"] = hashlib.sha256(data).hexdigest()
        write_json(tmp / "SOURCE.json", record)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=REPO_ROOT.parent / "shared" / "datasets" / "amazon18")
    parser.add_argument("--dst", type=Path, default=EMBEDDED_DIR)
    args = parser.parse_args(argv)
    record = pack_amazon18(args.src, args.dst)
    size = sum(p.stat().st_size for p in args.dst.rglob("*.gz"))
    print(f"packed {len(record['files'])} files into {args.dst} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
