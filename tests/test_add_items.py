"""tokenization/add_items.py: new items get SIDs from the saved state (no refit), unique against the existing ones,
existing SIDs never move, and a model trained before they existed recommends them for a history of their
near-duplicates (semantic cold start)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_builders.dataset import BuiltDataset, Item, Row, load_rec_dataset, write_json, write_rec_dataset
from decoding.cli import LoadedRecommender
from tokenization import add_items as A
from tokenization.artifact import load_sid_artifact
from tokenization.build import main as build_main

REPO = Path(__file__).resolve().parent.parent
TINY_SFT = REPO / "configs" / "tiny" / "sft.yaml"
D = "Toys"
CLUSTERS, PER = 4, 8  # 4 clusters of 8 items; the last of each cluster is first seen in the test period


def test_dedup_level_takes_the_smallest_free_code_then_the_next_nearest_last_code():
    existing = np.array([[0, 0, 0], [0, 0, 1], [1, 2, 0]])
    semantic = np.array([[0, 0], [1, 2], [1, 2]])
    cost = np.array([[0.0, 5.0, 1.0], [9.0, 9.0, 0.0], [9.0, 9.0, 0.0]])
    codes, moved = A.assign_codes(existing, semantic, cost, dedup_size=2)
    # (0, 0) is full (dedup 0 and 1 taken): the next-cheapest last code is 2, then 1
    assert codes.tolist() == [[0, 2, 0], [1, 2, 1], [1, 0, 0]] and moved == 2
    assert existing.tolist() == [[0, 0, 0], [0, 0, 1], [1, 2, 0]]  # never touched
    assert len({tuple(r) for r in np.concatenate([existing, codes]).tolist()}) == 6


def test_without_dedup_level_a_colliding_item_moves_to_the_nearest_free_last_code():
    existing = np.array([[0, 0], [0, 1]])
    codes, moved = A.assign_codes(existing, np.array([[0, 0], [0, 3]]), np.array([[0.0, 3.0, 1.0, 2.0]] * 2), None)
    assert codes.tolist() == [[0, 2], [0, 3]] and moved == 1


def test_a_full_prefix_is_a_clear_error():
    with pytest.raises(A.UserError, match="every SID under prefix"):
        A.assign_codes(np.array([[0, 0], [0, 1]]), np.array([[0, 0]]), np.array([[0.0, 1.0]]), None)


def clustered(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """A domain of 4 clusters (embeddings: cluster centre + noise); every user walks one cluster, and the last item
    of each cluster only ever appears as a test target."""
    rng = np.random.default_rng(seed)
    ids = [f"{D}:{c}_{j}" for c in range(CLUSTERS) for j in range(PER)]
    items = [Item(i, D, title=f"cluster {i.split(':')[1]}") for i in ids]
    rows, src = [], 0
    for u in range(96):
        c = u % CLUSTERS
        old = [f"{D}:{c}_{j}" for j in rng.permutation(PER - 1)[:5]]
        seq = old + ([f"{D}:{c}_{PER - 1}"] if u < 8 else [f"{D}:{c}_{int(rng.integers(PER - 1))}"])
        for t in range(1, len(seq)):
            split = "test" if t == len(seq) - 1 else "valid" if t == len(seq) - 2 else "train"
            rows.append(Row(f"U{u}", D, seq[:t], seq[t], split, -1, src if split != "train" else -1))
            src += split != "train"
    write_rec_dataset(BuiltDataset(items=items, rows=rows, source={"format": "clustered"}), root / "dataset")
    ds = load_rec_dataset(root / "dataset")
    centres = np.eye(16, dtype=np.float32)[:CLUSTERS] * 4
    x = np.stack([centres[int(i.split(":")[1].split("_")[0])] for i in ds.item_ids])
    x = (x + rng.normal(scale=0.3, size=x.shape)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    (root / "embeddings").mkdir()
    np.save(root / "embeddings" / "embeddings.npy", x)
    write_json(root / "embeddings" / "meta.json", {"format": "genrec-embeddings/1", "n_items": len(x), "dim": 16,
                                                   "dataset_hash": ds.dataset_hash})
    return root / "dataset", root / "embeddings"


def build(root: Path, dataset: Path, emb: Path, name: str, *extra: str) -> Path:
    out = root / name
    assert build_main(["--dataset", str(dataset), "--embeddings", str(emb), "--output_dir", str(out), "--levels", "2",
                       "--codebook_size", "4", "--quality_pairs", "50", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """Dataset, embeddings, SIDs fitted before test (28 items), and their extension by the 4 new items."""
    root = tmp_path_factory.mktemp("cold")
    dataset, emb = clustered(root)
    sids = build(root, dataset, emb, "sids", "--method", "rq_kmeans", "--items", "before_test")
    assert A.main(["--sids", str(sids), "--out", str(root / "sids_v2")]) == 0
    train_cold_model(root, dataset, sids)
    return root, dataset, emb, sids, root / "sids_v2"


def train_cold_model(root: Path, dataset: Path, sids: Path) -> Path:
    """root/ckpt: a scratch decoder trained on the SIDs fitted before test (it never saw the new items)."""
    from sft.train import run_sft

    run_sft(["--config", str(TINY_SFT), "--dataset_dir", str(dataset), "--sid_dir", str(sids),
             "--output_dir", str(root / "ckpt"), "--model_name_or_path", "scratch", "--mode", "full",
             "--weight_title2sid", "0", "--scratch_hidden_size", "32", "--scratch_layers", "2",
             "--scratch_heads", "2", "--max_steps", "300", "--learning_rate", "3e-3", "--val_rec_rows", "0",
             "--train_splits", "train", "valid"])
    return root / "ckpt"


NEW = [f"{D}:{c}_{PER - 1}" for c in range(CLUSTERS)]


def test_before_test_fits_only_the_items_of_train_and_valid_rows(cold):
    _, dataset, _, sids, _ = cold
    art = load_sid_artifact(sids)
    assert len(art.item_ids) == CLUSTERS * (PER - 1) and not set(NEW) & set(art.item_ids)
    assert art.meta["item_subset"] == "before_test"


def test_new_version_appends_unique_sids_and_leaves_the_old_ones(cold):
    _, _, _, sids, v2 = cold
    old, new = load_sid_artifact(sids), load_sid_artifact(v2)
    A.check_extends(old, new, "test")  # raises unless the old items and SIDs come first, unchanged
    assert new.item_ids[len(old.item_ids):] == NEW
    assert len(set(new.sid_strings())) == len(new.item_ids)
    assert new.meta["added_items"]["added"] == 4 and new.meta["added_items"]["parent"] == str(sids)
    # each new item lands in its near-duplicates' first-level cluster (nearest centroid from the saved state)
    for item in NEW:
        mates = [i for i in old.item_ids if i.split("_")[0] == item.split("_")[0]]
        first = {old.sid_codes(i)[0] for i in mates}
        assert new.sid_codes(item)[0] in first and len(first) == 1


def test_rq_and_fsq_encoders_reproduce_the_fitted_codes(tmp_path):
    dataset, emb = clustered(tmp_path)
    x = np.load(emb / "embeddings.npy")
    for method in ("rq_kmeans", "fsq"):
        extra = ["--fsq_levels", "4", "4", "--fsq_group_size", "1", "--fsq_epochs", "2", "--fsq_hidden", "8"] \
            if method == "fsq" else []
        art = load_sid_artifact(build(tmp_path, dataset, emb, method, "--method", method, *extra))
        semantic, cost = A.item_encoder(art)(x)
        s = semantic.shape[1]
        assert np.array_equal(semantic[:, :s - 1], np.asarray(art.codes)[:, :s - 1]), method
        assert cost.shape == (len(x), art.codebook_sizes[s - 1])
        assert (cost.argmin(1) == semantic[:, -1]).all(), method  # the nearest last code is the encoded one


def test_a_model_trained_before_the_new_items_recommends_them_after_their_near_duplicates(cold):
    root, dataset, _, sids, v2 = cold
    ckpt = root / "ckpt"
    before = LoadedRecommender(ckpt, dataset)
    with pytest.raises(A.UserError, match="no SID"):  # without the new version the model cannot name them
        before.resolve(history=[NEW[0]])
    rec = LoadedRecommender(ckpt, dataset, v2)

    def rank(item: str, cluster: int) -> int:  # the item's place in the whole domain ranked after 4 of the cluster
        history = [f"{D}:{cluster}_{j}" for j in range(4)]
        (out,) = rec.run([rec.resolve(history=history, k=CLUSTERS * PER, num_beams=CLUSTERS * PER)])
        return [i["item_id"] for i in out["items"]].index(item)

    for c, item in enumerate(NEW):
        own, others = rank(item, c), [rank(item, h) for h in range(CLUSTERS) if h != c]
        # recommended in the top half after its near-duplicates, and ranked lower after every other cluster. Its
        # last SID code is one the model never saw under that prefix, so it does not reach its mates' ranks: the
        # cold-start cost measured on the real data (README, New items).
        assert own < CLUSTERS * PER // 2 and own < min(others), (item, own, others)


def test_new_items_from_a_file_travel_with_the_artifact(cold, monkeypatch):
    root, dataset, _, sids, _ = cold

    def fake_embed(items, meta):  # the real encoder is tested in test_embeddings; here: a vector near cluster 2
        x = np.zeros((len(items), 16), dtype=np.float32)
        x[:, 2] = 1.0
        return x

    monkeypatch.setattr(A, "embed_new_items", fake_embed)
    f = root / "new.jsonl"
    f.write_text(json.dumps({"item_id": "Toys:brand_new", "domain": D, "title": "A brand-new toy"}) + "\n")
    out = root / "sids_file"
    assert A.main(["--sids", str(sids), "--out", str(out), "--new_items", str(f)]) == 0
    art = load_sid_artifact(out)
    assert art.item_ids[-1] == "Toys:brand_new"
    assert A.artifact_items(art) == [{"item_id": "Toys:brand_new", "domain": D, "title": "A brand-new toy",
                                      "brand": None, "categories": None, "features": None, "description": None}]
    rec = LoadedRecommender(root / "ckpt", dataset, out)
    assert rec.items["Toys:brand_new"]["title"] == "A brand-new toy"
    assert rec.catalogue.sid_string("Toys:brand_new") == art.sid_string("Toys:brand_new")
    (answer,) = rec.run([rec.resolve(history=["Toys:brand_new"], k=3)])  # a history of the new item works too
    assert len(answer["items"]) == 3 and answer["history"][0]["title"] == "A brand-new toy"


@pytest.mark.parametrize("args, message", [
    (["--out", "{sids}"], "must differ from --sids"),
    (["--items", "Toys:nope"], "unknown item ids ['Toys:nope']"),
    (["--items", "Toys:0_0"], "already have a SID"),
    (["--new_items", "{root}/missing.jsonl"], "missing.jsonl"),
    (["--new_items", "{root}/bad.jsonl"], "bad.jsonl:1: not JSON"),
    (["--new_items", "{root}/noid.jsonl"], "needs a non-empty 'item_id'"),
    (["--new_items", "{root}/dup.jsonl"], "already has a SID or is in the dataset"),
])
def test_bad_input_is_one_error_line_and_nothing_written(cold, tmp_path, capsys, args, message):
    root, *_ = cold
    sids = root / "sids"
    (root / "bad.jsonl").write_text("{nope\n")
    (root / "noid.jsonl").write_text(json.dumps({"domain": D, "title": "x"}) + "\n")
    (root / "dup.jsonl").write_text(json.dumps({"item_id": "Toys:0_0", "domain": D, "title": "x"}) + "\n")
    fmt = [a.format(sids=sids, root=root) for a in args]
    out = ["--out", str(tmp_path / "out")] if "--out" not in fmt else []
    assert A.main(["--sids", str(sids), *out, *fmt]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_external_sids_have_no_encoder(tmp_path, capsys):
    dataset, _ = clustered(tmp_path)
    ids = load_rec_dataset(dataset).item_ids
    index = {i: [f"<a_{k % 4}>", f"<b_{k // 4}>"] for k, i in enumerate(ids) if not i.endswith(f"_{PER - 1}")}
    (tmp_path / "index.json").write_text(json.dumps(index))
    sids = tmp_path / "ext"
    assert build_main(["--dataset", str(dataset), "--embeddings", "", "--output_dir", str(sids), "--method",
                       "external", "--external_index", str(tmp_path / "index.json"), "--items", "before_test",
                       "--quality_pairs", "0"]) == 0
    assert A.main(["--sids", str(sids), "--out", str(tmp_path / "out")]) == 2
    assert "have no encoder for unseen items" in capsys.readouterr().err


def test_prefix_scores_add_up_to_the_full_score(cold):
    """log P(SID[:p]) for p = 1..L, then + log P(EOS | SID) = the full score beam search ranks by."""
    import torch

    from decoding.score import score_items
    from sft.modeling import load_sft_checkpoint

    root, dataset, *_ = cold
    model, tok, art = load_sft_checkpoint(root / "ckpt")
    cat = LoadedRecommender(root / "ckpt", dataset).catalogue
    hist, cands = [[f"{D}:0_1", f"{D}:0_2"]], [[f"{D}:0_3", f"{D}:2_1"]]
    full = score_items(model, tok, cat, hist, cands)[0]
    parts = [score_items(model, tok, cat, hist, cands, prefix_levels=p)[0] for p in range(1, cat.levels + 1)]
    assert all((np.diff(np.stack(parts), axis=0) < 0).all(axis=0))  # each level adds a log-probability < 0
    assert (parts[-1] > full).all()  # the full score also pays for EOS
    from decoding.recommend import encode_prompts, history_prompts

    ids, mask = encode_prompts(tok, history_prompts(tok, cat, hist, 10))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[0, -1].float(), -1)
    first = [logp[tok.convert_tokens_to_ids(cat.sid_tokens(c)[0])].item() for c in cands[0]]
    assert parts[0] == pytest.approx(first, abs=1e-4)
    with pytest.raises(ValueError, match="prefix_levels=9"):
        score_items(model, tok, cat, hist, cands, prefix_levels=9)


def test_merged_new_items_reach_the_top_after_their_near_duplicates(cold):
    """With the prefix merge (decoding/cold_start.py) the new item of the history's cluster enters the top 8 —
    which the plain beam search above could not do for cluster 0."""
    root, dataset, _, _, v2 = cold
    rec = LoadedRecommender(root / "ckpt", dataset, v2, new_item_levels=1, new_item_offset=-2.0)
    assert rec.cold is not None and rec.cold.items == tuple(NEW)
    for c, item in enumerate(NEW):
        (out,) = rec.run([rec.resolve(history=[f"{D}:{c}_{j}" for j in range(4)], k=PER)])
        got = [i["item_id"] for i in out["items"]]
        assert item in got and len(set(got)) == PER, (item, got)
    # an offset of -1e9 merges nothing: the answer is the plain beam search's
    never = LoadedRecommender(root / "ckpt", dataset, v2, new_item_levels=1, new_item_offset=-1e9)
    req = never.resolve(history=[f"{D}:0_{j}" for j in range(4)], k=PER)
    (merged,) = never.run([req])
    never.cold = None
    assert never.run([req]) == [merged]


def test_eval_generative_cold_rows_score_the_new_targets(cold, tmp_path):
    """eval.run with the extended artifact: the plain model never hits a new target; generative_cold's rows do, the
    new-target slice and new_items@10 say so, and a bad sweep value is one error line."""
    from eval.run import run_eval

    root, dataset, emb, _, v2 = cold
    base = ["--config", str(REPO / "configs" / "tiny" / "eval.yaml"), "--dataset", str(dataset), "--embeddings",
            str(emb), "--generative_checkpoint", str(root / "ckpt"), "--generative_sid_dir", str(v2)]
    m = run_eval([*base, "--output_dir", str(tmp_path / "eval"), "--methods", "popularity", "generative",
                  "generative_cold", "--cold_prefix_levels", "1", "--cold_offsets", "-2", "-50"])
    assert m["method_order"] == ["popularity", "generative", "generative_cold[p=1,c=-2]", "generative_cold[p=1,c=-50]"]
    new = {n: m["slices"][n]["new target (in no training row)"] for n in m["method_order"]}
    assert new["generative"]["rows"] == 8 and new["popularity"]["hr@10"] == 0.0
    assert new["generative_cold[p=1,c=-2]"]["ndcg@10"] > new["generative"]["ndcg@10"]  # ranked higher
    assert new["generative_cold[p=1,c=-50]"] == new["generative"]  # an offset that merges nothing: the beams
    assert m["methods"]["generative"]["all"]["new_items@10"] == pytest.approx(0.1)  # one new item per top 10
    assert m["training"]["generative_cold[p=1,c=-2]"]["new_items"] == 4
    with pytest.raises(A.UserError, match="cold_offset"):
        run_eval([*base, "--output_dir", str(tmp_path / "bad"), "--methods", "generative_cold",
                  "--cold_offsets", "0.5"])
