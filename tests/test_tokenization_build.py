"""End to end: `python -m tokenization.build` on a tiny synthetic dataset, the artifact API, determinism, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_builders.dataset import BuiltDataset, DataError, Item, Row, write_json, write_rec_dataset
from tokenization.artifact import load_sid_artifact
from tokenization.build import BuildArgs
from tokenization.build import build as main
from tokenization.inputs import check_embeddings, check_item_ids
from tokenization.sid_format import parse_sid_string

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "configs" / "tiny" / "tokenization.yaml"
WORDS = ["red", "blue", "pen", "lamp", "desk", "paper", "clip", "stapler", "ink", "glue", "tape", "box"]


def write_embeddings(out: Path, x: np.ndarray, dataset_meta: dict, item_ids: list[str]) -> Path:
    """An embeddings dir in the data_builders.embeddings format."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "embeddings.npy", x)
    write_json(out / "meta.json", {
        "format": "genrec-embeddings/1", "encoder": "synthetic", "dim": int(x.shape[1]), "n_items": len(x),
        "dataset_hash": dataset_meta["dataset_hash"],
        "item_ids_sha256": hashlib.sha256("\n".join(item_ids).encode()).hexdigest(),
        "content_sha256": hashlib.sha256((out / "embeddings.npy").read_bytes()).hexdigest(),
    })
    return out


def make_tiny(root: Path, n: int = 240, d: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Two domains of clustered items, users buying inside a cluster (so co-occurrence has signal)."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 12, n)
    items = [Item(item_id=f"{'Office' if i % 2 else 'Toys'}:{i}", domain="Office" if i % 2 else "Toys",
                  title=" ".join(rng.choice(WORDS, 3))) for i in range(n)]
    rows = []
    for u in range(80):
        members = np.flatnonzero(cluster == u % 12)
        seq = [items[j].item_id for j in rng.choice(members, 4, replace=False)]
        for split, cut in (("train", 2), ("valid", 3)):
            rows.append(Row(user_id=f"u{u}", domain="Office", history=seq[:cut], target=seq[cut], split=split))
    meta = write_rec_dataset(BuiltDataset(items=items, rows=rows, source={"kind": "synthetic"}), root / "dataset")
    centres = rng.normal(size=(12, d))
    x = centres[cluster] + 0.5 * rng.normal(size=(n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    emb = write_embeddings(root / "embeddings", x, meta, [i.item_id for i in items])
    return root / "dataset", emb


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return make_tiny(tmp_path_factory.mktemp("tiny_tok"))


def run(tiny, out: Path, *extra: str) -> dict:
    dataset, emb = tiny
    return main(["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(emb),
                 "--output_dir", str(out), *extra])


def test_cli_end_to_end_and_artifact_api(tiny, tmp_path, capsys):
    meta = run(tiny, tmp_path / "sids")
    printed = capsys.readouterr().out
    assert "SID artifact: rq_kmeans" in printed and "collisions before" in printed
    for name in ("meta.json", "quality.json", "quality.png", "codes.npy", "item_ids.json", "index.json",
                 "codebooks/centroids.npy"):
        assert (tmp_path / "sids" / name).exists(), name
    art = load_sid_artifact(tmp_path / "sids")
    assert meta["levels"] == art.levels == 4 and meta["semantic_levels"] == 3 and meta["dedup_level"]
    assert art.meta["codebook_sizes"][:3] == [16, 16, 16] and art.meta["token_format"] == "<{letter}_{code}>"
    assert art.meta["inputs"]["embeddings_sha256"] == hashlib.sha256(
        (tiny[1] / "embeddings.npy").read_bytes()).hexdigest()
    # round trip SID <-> item for every item; all tokens ordered level by level
    sids = art.sid_strings()
    assert len(set(sids)) == len(sids) == 240
    for item_id in art.item_ids:
        assert art.item_for_sid(art.sid_string(item_id)) == item_id
        assert art.item_for_sid(art.sid_tokens(item_id)) == item_id
        assert parse_sid_string(art.sid_string(item_id)) == art.sid_codes(item_id)
    assert art.all_tokens()[:2] == ["<a_0>", "<a_1>"] and art.all_tokens()[-1] == f"<d_{art.codebook_sizes[3] - 1}>"
    assert not art.has_sid("<a_0>") and not art.has_sid("garbage")
    with pytest.raises(KeyError):
        art.item_for_sid("<a_99><b_0><c_0><d_0>")
    quality = json.loads((tmp_path / "sids" / "quality.json").read_text())
    assert quality["collisions_after"]["collision_rate"] == 0.0 and len(quality["levels"]) == 4
    assert len(quality["reconstruction_mse"]) == 4
    assert set(quality["neighbour_consistency"]) == {"prefix_1", "prefix_2"}
    index = json.loads((tmp_path / "sids" / "index.json").read_text())
    assert index[art.item_ids[0]] == art.sid_tokens(art.item_ids[0])


def test_same_seed_gives_byte_identical_artifact(tiny, tmp_path):
    out = tmp_path / "sids"
    run(tiny, out)
    shutil.copytree(out, tmp_path / "first")
    run(tiny, out)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "first") for p in (tmp_path / "first").rglob("*") if p.is_file())
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / "first" / name).read_bytes(), name
    run(tiny, tmp_path / "seed1", "--seed", "1")
    assert not np.array_equal(np.load(out / "codes.npy"), np.load(tmp_path / "seed1" / "codes.npy"))


@pytest.mark.parametrize("method", ["balanced_rq_kmeans", "fsq"])
def test_other_methods_end_to_end(tiny, tmp_path, method):
    meta = run(tiny, tmp_path / method, "--method", method)
    art = load_sid_artifact(tmp_path / method)
    assert art.meta["algorithm"] == method and meta["levels"] == 4
    assert art.codebook_sizes[:3] == [16, 16, 16]
    if method == "balanced_rq_kmeans":
        for spread in meta["method_info"]["size_spread"]:
            assert 240 // 16 <= spread["min"] <= spread["max"] <= 240 // 16 + 1


def test_reassign_keeps_levels_and_domain_filter(tiny, tmp_path):
    meta = run(tiny, tmp_path / "re", "--collision", "reassign", "--domains", "Office",
               "--levels", "2")
    art = load_sid_artifact(tmp_path / "re")
    assert meta["levels"] == 2 and not meta["dedup_level"] and len(art.item_ids) == 120
    assert all(item_id.startswith("Office:") for item_id in art.item_ids)


def test_external_index_import_and_export(tiny, tmp_path):
    """Export ours as index.json, re-import it as external SIDs (raw ids + prefix): the same SIDs come back."""
    run(tiny, tmp_path / "ours", "--domains", "Toys")
    ours = load_sid_artifact(tmp_path / "ours")
    raw = {k.split(":", 1)[1]: v for k, v in json.loads((tmp_path / "ours" / "index.json").read_text()).items()}
    (tmp_path / "peer.index.json").write_text(json.dumps(raw))
    meta = run(tiny, tmp_path / "ext", "--method", "external", "--external_index", str(tmp_path / "peer.index.json"),
               "--external_id_prefixes", "Toys:", "--domains", "Toys", "--collision", "none")
    ext = load_sid_artifact(tmp_path / "ext")
    assert meta["levels"] == 4 and ext.item_ids == ours.item_ids and np.array_equal(ext.codes, ours.codes)
    with pytest.raises(ValueError, match="no SID"):
        run(tiny, tmp_path / "ext2", "--method", "external", "--external_index", str(tmp_path / "peer.index.json"))



def _index_with_collisions(tiny, path: Path) -> tuple[list[str], np.ndarray]:
    """A 3-token external index for the 240 tiny items, unique except rows 5 and 7 (copies of rows 0 and 1)."""
    from data_builders.dataset import load_rec_dataset

    item_ids = load_rec_dataset(tiny[0]).item_ids
    codes = np.stack(np.unravel_index(np.arange(len(item_ids)) * 7 % 16**3, (16, 16, 16)), axis=1)  # distinct
    codes[5], codes[7] = codes[0], codes[1]
    path.write_text(json.dumps({i: [f"<{'abc'[l]}_{c}>" for l, c in enumerate(row)] for i, row in
                                zip(item_ids, codes.tolist())}))
    return item_ids, codes


def test_dedup_level_lengthens_every_sid_reassign_only_moves_colliders(tiny, tmp_path):
    """Issue #11 item 12: 2 of 240 items collide. dedup_level gives *all* 240 items a 4th token (0 for the 238 that
    collide with nobody); reassign keeps 3 tokens and changes only the last code of rows 5 and 7."""
    item_ids, index = _index_with_collisions(tiny, tmp_path / "peer.index.json")
    external = ["--method", "external", "--external_index", str(tmp_path / "peer.index.json"), "--embeddings", "",
                "--codebook_size", "16"]
    meta = run(tiny, tmp_path / "dedup", *external, "--collision", "dedup_level")
    dedup = load_sid_artifact(tmp_path / "dedup")
    assert dedup.item_ids == item_ids and meta["levels"] == 4 and meta["codebook_sizes"] == [16, 16, 16, 2]
    assert np.array_equal(dedup.codes[:, :3], index)
    assert np.flatnonzero(dedup.codes[:, 3]).tolist() == [5, 7]  # every other item: a 4th token <d_0>
    assert dedup.sid_string(item_ids[100]) == "".join(f"<{'abc'[l]}_{c}>" for l, c in enumerate(index[100])) + "<d_0>"

    meta = run(tiny, tmp_path / "re", *external, "--collision", "reassign")
    re = load_sid_artifact(tmp_path / "re")
    assert meta["levels"] == 3 and meta["codebook_sizes"] == [16, 16, 16] and re.levels == 3
    assert np.flatnonzero((re.codes != index).any(1)).tolist() == [5, 7]
    assert np.array_equal(re.codes[:, :2], index[:, :2])  # only the last code moved
    # nearest free code number (external SIDs carry no geometry): both neighbours are free in this index
    assert abs(int(re.codes[5, 2]) - int(index[5, 2])) == 1 and abs(int(re.codes[7, 2]) - int(index[7, 2])) == 1

    from decoding.trie import build_trie

    trie = build_trie(re.codes, {None: np.arange(240)})  # the 3-token SIDs form a trie naming each item once
    assert trie.levels == 3 and [trie.item_of(trie.root(None), row) for row in re.codes.tolist()] == list(range(240))


def test_sids_of_mixed_lengths_are_refused(tmp_path):
    """Decoding assumes one SID length (README: Collisions and SID length), so every way in refuses mixed ones."""
    from decoding.catalogue import Catalogue
    from tokenization.artifact import check_codes
    from tokenization.methods import external_codes
    from tokenization.sid_format import read_index_json

    (tmp_path / "mixed.json").write_text(json.dumps({"1": ["<a_1>", "<b_2>"], "2": ["<a_1>", "<b_2>", "<c_0>"]}))
    with pytest.raises(ValueError, match="key '2': 3 levels, but the first item has 2; every SID must have the same"):
        read_index_json(tmp_path / "mixed.json")
    (tmp_path / "two.json").write_text(json.dumps({"1": ["<a_1>", "<b_2>"]}))
    (tmp_path / "three.json").write_text(json.dumps({"2": ["<a_1>", "<b_2>", "<c_0>"]}))
    with pytest.raises(ValueError, match="three.json: 3 levels, the other index files have a different number"):
        external_codes([str(tmp_path / "two.json"), str(tmp_path / "three.json")], [], ["1", "2"])
    padded = np.array([[1, 2, -1], [1, 2, 0], [1, 2, 1]])  # (1,2) extended only where it collides, -1 = no token
    with pytest.raises(DataError, match="item 'x' level 2 has code -1.*mixed lengths.*not supported"):
        check_codes(["x", "y", "z"], padded, [4, 4, 2], where="sids")
    with pytest.raises(ValueError, match="different numbers of levels"):
        Catalogue.from_sids({"x": "<a_1><b_2>", "y": "<a_1><b_2><c_0>"})

# ---------------------------------------------------------------- bad input

def test_bad_embeddings_are_named():
    ids = ["a", "b", "c"]
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(DataError, match="NaN/inf.*row 1.*'b'"):
        check_embeddings(np.where(np.arange(3)[:, None] == 1, np.nan, x), ids, "emb.npy")
    with pytest.raises(DataError, match="zero norm.*row 2.*'c'"):
        check_embeddings(x * np.array([[1], [1], [0]], dtype=np.float32), ids, "emb.npy")
    with pytest.raises(DataError, match="dimension 3 does not match meta.json dim 4"):
        check_embeddings(x, ids, "emb.npy", dim=4)
    with pytest.raises(DataError, match="fewer than the 8 codes"):
        check_embeddings(x, ids, "emb.npy", min_items=8)
    with pytest.raises(DataError, match="duplicate item id 'a'"):
        check_item_ids(["a", "b", "a"], "items.parquet")


def test_cli_rejects_bad_inputs(tiny, tmp_path):
    dataset, emb = tiny
    x = np.load(emb / "embeddings.npy")
    meta = json.loads((dataset / "meta.json").read_text())
    ids = json.loads(json.dumps([f"{'Office' if i % 2 else 'Toys'}:{i}" for i in range(len(x))]))
    bad = x.copy()
    bad[7] = np.nan
    nan_dir = write_embeddings(tmp_path / "nan", bad, meta, ids)
    with pytest.raises(DataError, match="NaN/inf.*row 7"):
        main(["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(nan_dir),
              "--output_dir", str(tmp_path / "o")])
    with pytest.raises(DataError, match="fewer than the 512 codes"):
        run(tiny, tmp_path / "o", "--codebook_size", "512")
    other = dict(meta, dataset_hash="0" * 64)
    wrong = write_embeddings(tmp_path / "wrong", x, other, ids)
    with pytest.raises(DataError, match="built from dataset"):
        main(["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(wrong),
              "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="`method`: .vqvae. is not one of"):
        run(tiny, tmp_path / "o", "--method", "vqvae")
    assert not (tmp_path / "o").exists()


def test_dimension_mismatch_with_meta(tiny, tmp_path):
    dataset, emb = tiny
    x = np.load(emb / "embeddings.npy")
    meta = json.loads((dataset / "meta.json").read_text())
    ids = [f"{'Office' if i % 2 else 'Toys'}:{i}" for i in range(len(x))]
    out = write_embeddings(tmp_path / "dim", x, meta, ids)
    emb_meta = json.loads((out / "meta.json").read_text())
    write_json(out / "meta.json", dict(emb_meta, dim=32))
    with pytest.raises(DataError, match="does not match meta"):
        main(["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(out),
              "--output_dir", str(tmp_path / "o")])


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize("config", sorted((REPO / "configs" / "tokenization").glob("*.yaml")) + [TINY_CONFIG],
                         ids=lambda p: p.name)
def test_every_config_parses_strictly(config):
    from trl import TrlParser

    first = config.read_text().splitlines()[0]
    assert first.startswith("# python -m tokenization.build --config configs/"), first
    (args,) = TrlParser((BuildArgs,)).parse_args_and_config(args=["--config", str(config)])
    assert args.method in ("rq_kmeans", "balanced_rq_kmeans", "fsq", "external", "rqvae_domain")


def test_misspelled_config_key_fails(tmp_path):
    from trl import TrlParser

    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_CONFIG.read_text() + "codebok_size: 8\n")
    with pytest.raises(ValueError, match="codebok_size"):
        TrlParser((BuildArgs,)).parse_args_and_config(args=["--config", str(bad)])
