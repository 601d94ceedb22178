"""Item embeddings with the embedded all-MiniLM-L6-v2: shape, unit norm, semantics, content-hash cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_builders.dataset import DataError, load_rec_dataset, write_rec_dataset
from data_builders.embeddings import TextEncoder, build_item_embeddings, load_item_embeddings
from data_builders.minionerec import import_minionerec


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


@pytest.fixture
def mini_dataset(tmp_path, mini_minionerec):
    write_rec_dataset(import_minionerec(mini_minionerec, "Mini"), tmp_path / "dataset")
    return load_rec_dataset(tmp_path / "dataset")


def test_encoder_output_is_unit_norm_and_semantic(encoder):
    emb = encoder.encode(["red stapler", "a stapler that is red", "quantum chromodynamics lecture"],
                         show_progress=False)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_order_is_preserved_despite_length_batching(encoder):
    texts = ["short", "a much longer text about office products and staplers", "mid length text"]
    together = encoder.encode(texts, batch_size=2, show_progress=False)
    alone = np.stack([encoder.encode([t], show_progress=False)[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_artifact_and_cache_hit(tmp_path, mini_dataset):
    meta = build_item_embeddings(mini_dataset, tmp_path / "emb", cache_dir=tmp_path / "cache", show_progress=False)
    assert not meta["cache_hit"] and meta["n_items"] == 6 and meta["dim"] == 384
    emb, loaded = load_item_embeddings(tmp_path / "emb", dataset=mini_dataset)
    assert emb.shape == (6, 384) and loaded["dataset_hash"] == mini_dataset.dataset_hash
    again = build_item_embeddings(mini_dataset, tmp_path / "emb2", cache_dir=tmp_path / "cache", show_progress=False)
    assert again["cache_hit"] and again["cache_key"] == meta["cache_key"]
    assert (tmp_path / "emb" / "embeddings.npy").read_bytes() == (tmp_path / "emb2" / "embeddings.npy").read_bytes()
    shorter = build_item_embeddings(mini_dataset, tmp_path / "emb3", max_tokens=8, cache_dir=tmp_path / "cache",
                                    show_progress=False)
    assert not shorter["cache_hit"] and shorter["cache_key"] != meta["cache_key"]  # different texts -> recomputed


def test_mismatched_dataset_and_bad_artifacts_are_reported(tmp_path, mini_dataset, mini_minionerec):
    build_item_embeddings(mini_dataset, tmp_path / "emb", cache_dir=None, show_progress=False)
    other = import_minionerec(mini_minionerec, "Mini", domain="Other")
    write_rec_dataset(other, tmp_path / "other")
    with pytest.raises(DataError, match="embeddings were built from dataset"):
        load_item_embeddings(tmp_path / "emb", dataset=load_rec_dataset(tmp_path / "other"))
    meta = json.loads((tmp_path / "emb" / "meta.json").read_text())
    meta["n_items"] = 7
    (tmp_path / "emb" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"shape \(6, 384\) does not match meta \(7, 384\)"):
        load_item_embeddings(tmp_path / "emb")
    with pytest.raises(FileNotFoundError, match="not a known embedded encoder"):
        TextEncoder(str(tmp_path / "nowhere"))
