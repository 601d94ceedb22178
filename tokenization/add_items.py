"""``python -m tokenization.add_items``: SIDs for items a SID artifact was not fitted on, without refitting or retraining.

    python -m tokenization.add_items --sids artifacts/amazon18/sids_cold --out artifacts/amazon18/sids_cold_v2
    python -m tokenization.add_items --sids artifacts/amazon18/sids_balanced --new_items new.jsonl --out DIR

Every method encodes an unseen item from its saved state, one item at a time (no joint assignment, so adding items
never moves an existing one): RQ-KMeans and balanced RQ-KMeans take the nearest centroid per level on the residual
(balanced capacity is a fitting-time constraint; the fitted centroids are what is kept), FSQ runs the saved
autoencoder, the domain-adaptive RQ-VAE (``rqvae_domain``) runs the saved net with the item's own domain's LoRA and
router (an item of a domain the artifact has no LoRA for is refused: rebuild with that domain's items). External
SIDs (an index.json) have no encoder: rebuild with the new items in the index instead.

Collisions are resolved against the existing SIDs, never by moving an existing item: with a de-duplication level
the new item takes the smallest free code under its prefix; when the prefix is full (the level has as many codes as
its largest group had at build time, and the model's vocabulary no more), or without a de-duplication level, it
moves to the next-nearest code of the last semantic level that is free. The SID tokens stay within the artifact's
codebooks, so a model trained on the old artifact has a token for every new SID: extend the trie (any consumer of
the new artifact does) and it can recommend the new items.

Items come from the dataset (default: its items without a SID, embedded in ``--embeddings``) or from a JSON-lines
file (``--new_items``: one object per line with ``item_id``, ``domain``, ``title`` and optionally ``brand``,
``categories``, ``features``, ``description``), whose text is embedded with the embeddings' encoder and template;
those items are stored in the new artifact (``new_items.jsonl``) so ``decoding.recommend`` and ``decoding.serve``
know their titles and domains. The output is a new artifact version: the parent's items and codes unchanged, the new
ones appended, ``meta.json`` naming the parent and what was added.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.cli import (UserError, check, check_output_dir, require_dir, require_file,
                               run_cli)

NEW_ITEMS_FILE = "new_items.jsonl"
TEXT_FIELDS = ("title", "brand", "categories", "features", "description")

# (x [M, d], domains [M] | None, item_ids [M] | None) -> (semantic codes [M, S], cost of each last code [M, K]);
# only rqvae_domain needs the domains (its encoders have a ``known_domains`` attribute: the domains with a LoRA)
Encoder = Callable[..., tuple[np.ndarray, np.ndarray]]


def item_encoder(artifact) -> Encoder:
    """The artifact's method, from its saved state: ``(x, domains=None, item_ids=None) -> (semantic codes, cost of
    each last semantic code)``."""
    from tokenization import balanced, rq_kmeans

    algo = artifact.meta.get("algorithm")
    books_dir = Path(artifact.path) / "codebooks"
    if algo in ("rq_kmeans", "balanced_rq_kmeans"):
        centroids = np.load(require_file(books_dir / "centroids.npy", "RQ centroids"))
        books = rq_kmeans.Codebooks(centroids)

        def encode_rq(x: np.ndarray, domains=None, item_ids=None) -> tuple[np.ndarray, np.ndarray]:
            check(x.shape[1] == books.dim, "--embeddings", f"vectors have {x.shape[1]} dimensions, the SID "
                                                           f"centroids {books.dim}")
            codes = rq_kmeans.encode(books, x)
            residual = rq_kmeans.last_level_residuals(books, x, codes)
            return codes, balanced.squared_distances(residual, books.centroids[-1])
        return encode_rq
    if algo == "fsq":
        return _fsq_encoder(artifact, books_dir)
    if algo == "rqvae_domain":
        return _rqvae_encoder(artifact, books_dir)
    raise UserError(f"{artifact.path}: {algo!r} SIDs have no encoder for unseen items (they were read from an index "
                    "file); add the new items to the index and rebuild with python -m tokenization.build")


def _fsq_encoder(artifact, books_dir: Path) -> Encoder:
    import torch

    from tokenization import fsq

    cfg = artifact.meta.get("config") or {}
    levels, group = list(cfg.get("fsq_levels") or []), int(cfg.get("fsq_group_size") or 0)
    state = {p.stem[len("fsq."):]: torch.from_numpy(np.load(p)) for p in sorted(books_dir.glob("fsq.*.npy"))}
    check(levels and group and state, str(books_dir), "no FSQ weights or layout saved; rebuild the SIDs")
    first = state.get("encoder.0.weight", state.get("encoder.weight"))
    net = fsq.FSQAutoencoder(first.shape[1], levels, int(cfg.get("fsq_hidden") or 0))
    net.load_state_dict(state)
    model = fsq.FSQModel(net.eval(), levels, group)
    last = slice(len(levels) - group, len(levels))
    values = fsq.codes_to_values(np.arange(model.codebook_sizes[-1])[:, None], levels[last], group)

    def encode_fsq(x: np.ndarray, domains=None, item_ids=None) -> tuple[np.ndarray, np.ndarray]:
        check(x.shape[1] == first.shape[1], "--embeddings", f"vectors have {x.shape[1]} dimensions, the FSQ "
                                                            f"encoder {first.shape[1]}")
        with torch.no_grad():
            z = net.encoder(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
            scaled = ((net.levels - 1) * torch.sigmoid(z)).numpy()[:, last]
        cost = ((scaled[:, None, :] - values[None].astype(np.float32)) ** 2).sum(-1)
        return fsq.encode_fsq(model, x), cost
    return encode_fsq


def _rqvae_encoder(artifact, books_dir: Path) -> Encoder:
    """The saved domain-adaptive RQ-VAE: each item through its own domain's LoRA + router, the frozen codebooks."""
    from tokenization import rqvae

    arrays = {p.stem[len("rqvae."):]: np.load(p) for p in sorted(books_dir.glob("rqvae.*.npy"))}
    model = rqvae.model_from_arrays(arrays, where=str(books_dir))
    dim = int(arrays["layout"][0])
    where = f"{artifact.path} (rqvae_domain SIDs)"

    def encode_rqvae(x: np.ndarray, domains: Sequence[str] | None = None, item_ids: Sequence[str] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        check(x.shape[1] == dim, "--embeddings", f"vectors have {x.shape[1]} dimensions, the RQ-VAE encoder {dim}")
        check(domains is not None and len(domains) == len(x), where,
              "each item is encoded with its domain's LoRA: pass one domain per item")
        enc = rqvae.encode(model, x, rqvae.domain_indices(model, domains, where, item_ids))
        return enc.codes, rqvae.last_level_cost(model, enc.last_residual)

    encode_rqvae.known_domains = list(model.domains)
    return encode_rqvae


def check_domains(encode: Encoder, domains: Sequence[str], ids: Sequence[str], sids: str) -> None:
    """Before any embedding work: an encoder with per-domain parts (rqvae_domain) knows every item's domain."""
    known = getattr(encode, "known_domains", None)
    if known is None:
        return
    unknown = [(i, d) for i, d in zip(ids, domains) if d not in known]
    if unknown:
        item, d = unknown[0]
        raise UserError(f"{sids} (rqvae_domain SIDs): {sum(u == d for _, u in unknown)} new item(s) of domain {d!r}, "
                        f"e.g. {item!r}, but the artifact has a trained LoRA + router only for {known}; rebuild the "
                        "SIDs with that domain's items (python -m tokenization.build)")


def assign_codes(existing: np.ndarray, semantic: np.ndarray, cost: np.ndarray, dedup_size: int | None
                 ) -> tuple[np.ndarray, int]:
    """Full codes for new items, unique against ``existing`` [N, L] and each other; existing rows never change.

    ``semantic`` [M, S] and ``cost`` [M, K] (the last semantic level's codes, cheapest first when sorted);
    ``dedup_size`` is the de-duplication level's size (``existing`` has S + 1 columns) or None (S columns).
    Returns (codes [M, L], how many new items left their nearest last-level code).
    """
    s = semantic.shape[1]
    taken: dict[tuple[int, ...], set[int]] = {}
    if dedup_size is not None:
        for row in existing:
            taken.setdefault(tuple(row[:s].tolist()), set()).add(int(row[s]))
    else:
        for row in existing:
            taken.setdefault(tuple(row[:s - 1].tolist()), set()).add(int(row[s - 1]))
    out = np.empty((len(semantic), existing.shape[1]), dtype=np.int64)
    moved = 0
    for m, (codes, c) in enumerate(zip(semantic, cost)):
        head = tuple(codes[:s - 1].tolist())
        nearest = int(codes[s - 1])
        order = [nearest] + [int(k) for k in np.argsort(c, kind="stable") if int(k) != nearest]
        for last in order:
            if dedup_size is not None:
                used = taken.setdefault((*head, last), set())
                free = next((d for d in range(dedup_size) if d not in used), None)
                if free is None:
                    continue
                used.add(free)
                out[m] = [*head, last, free]
            else:
                used = taken.setdefault(head, set())
                if last in used:
                    continue
                used.add(last)
                out[m] = [*head, last]
            moved += last != nearest
            break
        else:
            raise UserError(f"new item {m}: every SID under prefix {head} is taken; rebuild the SIDs with the new "
                            "items (python -m tokenization.build)")
    return out, moved


def read_new_items(path: str, known: set[str]) -> list[dict[str, Any]]:
    """Items of a JSON-lines file, checked: ids new and unique, a domain and a title each."""
    items, seen = [], set()
    lines = require_file(path, "--new_items").read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
        check(isinstance(item, dict), f"{path}:{n}", "each line must be a JSON object")
        for key in ("item_id", "domain", "title"):
            check(isinstance(item.get(key), str) and item[key].strip(), f"{path}:{n}", f"needs a non-empty {key!r}")
        check(item["item_id"] not in known, f"{path}:{n}", f"item {item['item_id']!r} already has a SID or is in "
                                                           "the dataset")
        check(item["item_id"] not in seen, f"{path}:{n}", f"item {item['item_id']!r} appears twice")
        seen.add(item["item_id"])
        items.append({"item_id": item["item_id"], "domain": item["domain"],
                      **{k: item.get(k) for k in TEXT_FIELDS}})
    check(items, path, "has no items")
    return items


def embed_new_items(items: list[dict[str, Any]], embeddings_meta: dict) -> np.ndarray:
    """The items' text (Algorithm 1 template, the embeddings' token budget) through the embeddings' encoder."""
    from data_builders.embeddings import TextEncoder, serialize_items

    enc = TextEncoder(embeddings_meta.get("encoder") or "embedded:all-minilm-l6-v2")
    budget = (embeddings_meta.get("text") or {}).get("max_tokens")
    texts = serialize_items([{**it, "categories": it.get("categories") or [], "features": it.get("features") or []}
                             for it in items], enc.tokenizer, budget)
    return enc.encode(texts, show_progress=len(texts) > 256)


def add_items(argv: Sequence[str]) -> dict[str, Any]:
    from data_builders.dataset import load_rec_dataset
    from tokenization.artifact import load_sid_artifact, write_sid_artifact
    from tokenization.inputs import read_embeddings_dir
    from tokenization.sid_format import sid_string

    p = argparse.ArgumentParser(prog="python -m tokenization.add_items", description=__doc__.split("\n")[0])
    p.add_argument("--sids", required=True, help="the SID artifact to extend (tokenization.build output)")
    p.add_argument("--out", required=True, help="the new artifact version (a new directory)")
    p.add_argument("--dataset", default=None, help="default: the dataset the SIDs were built from")
    p.add_argument("--embeddings", default=None, help="default: the embeddings the SIDs were built from")
    p.add_argument("--new_items", default=None, help="a JSON-lines file of items outside the dataset")
    p.add_argument("--items", nargs="+", default=None, metavar="ITEM_ID",
                   help="only these dataset items (default: every dataset item without a SID)")
    a = p.parse_args(argv)
    check(not (a.new_items and a.items), "--items", "give --items (dataset items) or --new_items (a file), not both")
    parent = load_sid_artifact(require_dir(a.sids, "--sids", containing="meta.json"))
    check(Path(a.out).resolve() != Path(a.sids).resolve(), "--out", "must differ from --sids (a new version)")
    check_output_dir(a.out)
    inputs = parent.meta.get("inputs") or {}
    dataset = load_rec_dataset(require_dir(a.dataset or inputs.get("dataset"), "--dataset", containing="meta.json"))
    check(inputs.get("dataset_hash") in (None, dataset.dataset_hash), "--dataset",
          f"{a.sids} was built from dataset {str(inputs.get('dataset_hash'))[:12]}, this one is "
          f"{dataset.dataset_hash[:12]}")
    encode = item_encoder(parent)
    emb_path = a.embeddings or inputs.get("embeddings")
    check(emb_path, "--embeddings", f"{a.sids} names no embeddings; pass the directory the SIDs were built from")
    x_all, emb_meta = read_embeddings_dir(require_dir(emb_path, "--embeddings", containing="meta.json"), dataset)

    have = set(parent.item_ids)
    parent_new = _stored_new_items(parent)
    if a.new_items:
        new = read_new_items(a.new_items, have | set(dataset.item_ids))
        ids = [it["item_id"] for it in new]
        domains = [it["domain"] for it in new]
        check_domains(encode, domains, ids, a.sids)
        x = embed_new_items(new, emb_meta)
    else:
        row = {item_id: i for i, item_id in enumerate(dataset.item_ids)}
        if a.items:
            unknown = [i for i in a.items if i not in row]
            check(not unknown, "--items", f"unknown item ids {unknown[:5]} (not in {dataset.path}/items.parquet)")
            already = [i for i in a.items if i in have]
            check(not already, "--items", f"{already[:5]} already have a SID in {a.sids}")
            check(len(set(a.items)) == len(a.items), "--items", "an item id is given twice")
            ids = list(a.items)
        else:
            ids = [i for i in dataset.item_ids if i not in have]
            check(ids, str(a.sids), f"every item of {dataset.path} already has a SID; pass --new_items FILE")
        new = []
        item_domain = dataset.items["domain"]
        domains = [str(item_domain[row[i]]) for i in ids]
        check_domains(encode, domains, ids, a.sids)
        x = np.ascontiguousarray(x_all[[row[i] for i in ids]], dtype=np.float32)

    start = time.perf_counter()
    semantic, cost = encode(x, domains, ids)
    dedup = bool(parent.meta.get("dedup_level"))
    codes, moved = assign_codes(np.asarray(parent.codes), semantic, cost,
                                parent.codebook_sizes[-1] if dedup else None)
    seconds = time.perf_counter() - start
    item_ids = [*parent.item_ids, *ids]
    all_codes = np.concatenate([np.asarray(parent.codes, dtype=np.int64), codes])
    meta = {k: v for k, v in parent.meta.items() if k not in ("format", "levels", "n_items", "content_hashes")}
    meta["added_items"] = {
        "parent": str(a.sids), "parent_codes_sha256": (parent.meta.get("content_hashes") or {}).get("codes.npy"),
        "parent_items": len(parent.item_ids), "added": len(ids), "source": a.new_items or str(dataset.path),
        "left_nearest_last_code": moved, "seconds": round(seconds, 3), "example_sid": sid_string(codes[0]),
        "history": [*(parent.meta.get("added_items") or {}).get("history", []),
                    {"parent": str(a.sids), "added": len(ids)}],
    }
    meta["command"] = "python -m tokenization.add_items " + shlex.join(argv)
    arrays = {f.stem: np.load(f) for f in sorted((Path(parent.path) / "codebooks").glob("*.npy"))}
    carried = [*parent_new, *new]  # items outside the dataset travel with the artifact
    extra = {NEW_ITEMS_FILE: "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in carried).encode()} \
        if carried else None
    meta = write_sid_artifact(a.out, item_ids, all_codes, meta, None, arrays, extra_files=extra)
    print(f"added {len(ids)} items to {len(parent.item_ids)} ({moved} moved off their nearest last-level code to "
          f"stay unique) in {seconds:.2f} s; wrote {a.out} (e.g. {ids[0]} -> {sid_string(codes[0])})")
    return meta


def _stored_new_items(artifact) -> list[dict[str, Any]]:
    path = Path(artifact.path) / NEW_ITEMS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def artifact_items(artifact) -> list[dict[str, Any]]:
    """The items a SID artifact carries beyond its dataset (``--new_items``), each with id, domain and text."""
    items = _stored_new_items(artifact)
    recorded = (artifact.meta.get("content_hashes") or {}).get(NEW_ITEMS_FILE)
    if items and recorded:
        from data_builders.dataset import DataError, sha256_file

        if sha256_file(Path(artifact.path) / NEW_ITEMS_FILE) != recorded:
            raise DataError(f"{artifact.path}/{NEW_ITEMS_FILE}: content changed since the artifact was written")
    return items


def check_extends(trained, newer, where: str) -> None:
    """``newer`` is ``trained`` plus appended items (python -m tokenization.add_items): same codebooks, the trained
    items first with unchanged SIDs. A model trained on ``trained`` can decode ``newer``'s catalogue."""
    n = len(trained.item_ids)
    check(newer.codebook_sizes == trained.codebook_sizes, where,
          f"codebooks {newer.codebook_sizes} differ from the model's SID artifact {trained.codebook_sizes}")
    check(list(newer.item_ids[:n]) == list(trained.item_ids) and np.array_equal(newer.codes[:n], trained.codes),
          where, f"is not an extension of the model's SID artifact {trained.path} (its items and SIDs must come "
                 "first, unchanged: python -m tokenization.add_items)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(add_items, argv, prog="add_items")


if __name__ == "__main__":
    sys.exit(main())
