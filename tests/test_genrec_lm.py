"""The scratch decoder's additions (sft/genrec_lm.py): dropout, item text at separators, save/reload, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REPO
from data_builders.dataset import load_rec_dataset
from data_builders.prompts import SID_SEP, next_item_prompt
from sft.modeling import load_sft_checkpoint
from sft.models import build_scratch_lm
from sft.train import run_sft as main
from sft_fixtures import make_tiny_pipeline
from tokenization.artifact import load_sid_artifact

CONFIG = str(REPO / "configs" / "tiny" / "sft.yaml")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("genrec")
    dataset_dir, sid_dir = make_tiny_pipeline(root)
    ds = load_rec_dataset(dataset_dir)
    emb = np.random.default_rng(0).normal(size=(len(ds.item_ids), 8)).astype(np.float32)
    (root / "embeddings").mkdir()
    np.save(root / "embeddings" / "embeddings.npy", emb)
    (root / "embeddings" / "meta.json").write_text(json.dumps(
        {"format": "genrec-embeddings/1", "n_items": len(emb), "dim": 8, "dataset_hash": ds.dataset_hash}))
    return dataset_dir, sid_dir, root / "embeddings", emb


def text_model(pipeline, dropout=0.0, seed=0):
    artifact = load_sid_artifact(pipeline[1])
    ds = load_rec_dataset(pipeline[0])
    model, tok = build_scratch_lm(artifact.all_tokens(), hidden_size=16, num_layers=1, heads=2, seed=seed,
                                  dropout=dropout, item_text_dim=8, n_items=len(artifact.item_ids),
                                  sid_levels=artifact.levels)
    row = {i: k for k, i in enumerate(ds.item_ids)}
    ids = [tok.convert_tokens_to_ids(artifact.sid_tokens(i)) for i in artifact.item_ids]
    model.set_item_text(ids, pipeline[3][[row[i] for i in artifact.item_ids]])
    return model, tok, artifact


def test_item_vectors_sit_exactly_at_the_separators_of_known_items(pipeline):
    model, tok, artifact = text_model(pipeline)
    a, b = artifact.item_ids[:2]
    prompt = next_item_prompt([artifact.sid_string(a), artifact.sid_string(b)], tok)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    vec = model.item_vectors(ids)[0]  # [T, hidden]
    sep = (ids[0] == tok.convert_tokens_to_ids(SID_SEP)).nonzero().flatten().tolist()
    assert sep == [2, 5]
    nonzero = (vec.abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert nonzero == sep
    # the vector at a separator is the projection of that item's own (standardised) text
    centred = pipeline[3] - pipeline[3].mean(0)
    std = centred / (centred.std(ddof=1) * 8 ** 0.5)  # global (unbiased) std 1/sqrt(D): vectors of norm ~1
    k = load_rec_dataset(pipeline[0]).item_ids.index(b)
    expected = model.item_proj(torch.tensor(std[k], dtype=torch.float32))
    assert torch.allclose(vec[5], expected, atol=1e-5)
    # a separator after tokens that are no item gets nothing; a left-padded prompt gets the same vectors
    junk = ids.clone()
    junk[0, 3:5] = junk[0, 0:2]  # <a_x><b_y> of item a again, then sep: that is item a, not b
    assert torch.allclose(model.item_vectors(junk)[0, 5], model.item_vectors(ids)[0, 2], atol=1e-6)
    padded = torch.cat([torch.full((1, 3), tok.pad_token_id), ids], dim=1)
    assert torch.allclose(model.item_vectors(padded)[0, 3:], vec, atol=1e-6)


def test_text_changes_the_prediction_and_dropout_is_training_only(pipeline):
    model, tok, artifact = text_model(pipeline, dropout=0.5)
    ids = tok(next_item_prompt([artifact.sid_string(artifact.item_ids[0])], tok), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model.eval()
        a, b = model(ids).logits, model(ids).logits
        assert torch.equal(a, b)  # eval: deterministic
        model.train()
        assert not torch.allclose(model(ids).logits, a)  # train: dropout active
        from trl.trainer.utils import disable_dropout_in_model

        disable_dropout_in_model(model)  # what RL trainers call (disable_dropout: true): on-policy training forward
        assert torch.allclose(model(ids).logits, a, atol=1e-6)
        model.eval()
        model.item_text.zero_()
        assert not torch.allclose(model(ids).logits, a)  # the text reaches the logits


def test_duplicate_sids_and_wrong_shapes_are_refused(pipeline):
    model, tok, artifact = text_model(pipeline)
    ids = np.array([tok.convert_tokens_to_ids(artifact.sid_tokens(i)) for i in artifact.item_ids])
    with pytest.raises(ValueError, match="share a SID"):
        model.set_item_text(np.repeat(ids[:1], len(ids), axis=0), pipeline[3])
    with pytest.raises(ValueError, match="do not match the config"):
        model.set_item_text(ids[:2], pipeline[3][:2])
    with pytest.raises(ValueError, match="dropout"):
        build_scratch_lm(artifact.all_tokens(), dropout=1.5)


def test_train_save_reload_decode_with_dropout_and_item_text(pipeline, tmp_path):
    from decoding.catalogue import Catalogue
    from decoding.recommend import recommend

    out = tmp_path / "sem"
    trainer = main(["--config", CONFIG, "--dataset_dir", str(pipeline[0]), "--sid_dir", str(pipeline[1]),
                    "--output_dir", str(out), "--model_name_or_path", "scratch", "--mode", "full",
                    "--weight_title2sid", "0", "--scratch_hidden_size", "16", "--scratch_layers", "1",
                    "--scratch_heads", "2", "--scratch_dropout", "0.1", "--item_text_embeddings", str(pipeline[2]),
                    "--max_steps", "3"])
    model, tok, artifact = load_sft_checkpoint(out)
    assert type(model).__name__ == "GenRecLlamaForCausalLM" and model.config.genrec_dropout == 0.1
    assert torch.equal(model.item_text, trainer.model.item_text) and model.item_text.abs().sum() > 0
    ids = tok(next_item_prompt([artifact.sid_string(i) for i in artifact.item_ids[:3]], tok),
              return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(trainer.model.eval()(ids).logits, model(ids).logits, atol=1e-6)
    dataset = load_rec_dataset(pipeline[0])
    rows = list(dataset.splits["test"])[:2]
    recs = recommend(model, tok, Catalogue.from_artifact(artifact, dataset), [list(r["history"]) for r in rows], k=3,
                     domains=[r["domain"] for r in rows], show_progress=False)
    assert all(len(rec) == 3 for rec in recs)


def test_item_text_options_are_refused_for_pretrained_bases(pipeline, tmp_path):
    with pytest.raises(ValueError, match="scratch only"):
        main(["--config", CONFIG, "--dataset_dir", str(pipeline[0]), "--sid_dir", str(pipeline[1]),
              "--output_dir", str(tmp_path / "x"), "--scratch_dropout", "0.2"])


def test_packed_sequences_train_each_window_once_with_its_own_prompt(pipeline):
    """Every window's target tokens (and the final EOS) are labelled exactly where TRL's prompt/completion example
    puts them: same context tokens before, same label tokens; nothing else carries loss."""
    from data_builders.examples import build_examples, packed_sequence_examples

    dataset = load_rec_dataset(pipeline[0])
    artifact = load_sid_artifact(pipeline[1])
    _, tok = build_scratch_lm(artifact.all_tokens(), hidden_size=16, num_layers=1, heads=2)
    rows = [r for s in ("train", "valid") for r in dataset.splits[s]]
    packed = packed_sequence_examples(rows, artifact, tok, max_history=3)
    plain = build_examples(dataset, artifact, tok, ["train", "valid"], {"seq_sid": 1.0}, 3)
    windows = {(ex["prompt"], ex["completion"]) for ex in plain}
    assert sum(packed["windows"]) == len(windows)
    assert len(packed) < len(windows)  # the point: fewer sequences than windows
    found = set()
    sep = tok.convert_tokens_to_ids(SID_SEP)
    for ids, labels in zip(packed["input_ids"], packed["labels"]):
        assert len(ids) == len(labels)
        j = 0
        while j < len(ids):
            if labels[j] == -100:
                j += 1
                continue
            end = j
            while end < len(ids) and labels[end] != -100 and ids[end] != sep:
                end += 1
            prompt = tok.decode(ids[:j])
            completion = tok.decode([t for t in ids[j:end] if t != tok.eos_token_id])
            assert (prompt, completion) in windows, (prompt, completion)
            assert ids[j:end] == labels[j:end]
            found.add((prompt, completion))
            j = end
    assert found == windows


def test_packing_trains_and_is_refused_for_text_prompts(pipeline, tmp_path):
    args = ["--config", CONFIG, "--dataset_dir", str(pipeline[0]), "--sid_dir", str(pipeline[1]),
            "--output_dir", str(tmp_path / "p"), "--model_name_or_path", "scratch", "--mode", "full",
            "--weight_title2sid", "0", "--scratch_hidden_size", "16", "--scratch_layers", "1", "--scratch_heads", "2",
            "--sequence_packing", "true", "--max_steps", "2"]
    trainer = main(args)
    assert trainer.state.global_step == 2 and "labels" in trainer.train_dataset.column_names
    with pytest.raises(ValueError, match="scratch only"):
        main(["--config", CONFIG, "--dataset_dir", str(pipeline[0]), "--sid_dir", str(pipeline[1]),
              "--output_dir", str(tmp_path / "q"), "--sequence_packing", "true"])


def test_early_stopping_needs_a_validation_metric(pipeline, tmp_path):
    with pytest.raises(ValueError, match="early_stopping_patience needs"):
        main(["--config", CONFIG, "--dataset_dir", str(pipeline[0]), "--sid_dir", str(pipeline[1]),
              "--output_dir", str(tmp_path / "e"), "--early_stopping_patience", "2"])


def test_centroid_init_puts_codebook_geometry_into_the_sid_rows(tmp_path):
    """sid_init: centroids — rows of close centroids are close; random init is not; bad combinations refused."""
    from sft.train import init_sid_rows_from_centroids
    from tokenization.artifact import write_sid_artifact

    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 16))
    cents = np.stack([np.concatenate([base, base + 1e-3 * rng.normal(size=(4, 16))])])  # codes k and k+4 ~ equal
    ids = [f"i{k}" for k in range(8)]
    write_sid_artifact(tmp_path / "sids", ids, np.arange(8)[:, None], {"codebook_sizes": [8], "algorithm": "x"})
    (tmp_path / "sids" / "codebooks").mkdir(exist_ok=True)
    np.save(tmp_path / "sids" / "codebooks" / "centroids.npy", cents)
    artifact = load_sid_artifact(tmp_path / "sids")
    model, tok = build_scratch_lm(artifact.all_tokens(), hidden_size=8, num_layers=1, heads=2)
    emb = model.get_input_embeddings().weight
    row = lambda k: emb[tok.convert_tokens_to_ids(f"<a_{k}>")].detach().clone()  # noqa: E731
    before = [torch.dist(row(k), row(k + 4)).item() for k in range(4)]
    init_sid_rows_from_centroids(model, tok, artifact)
    after = [torch.dist(row(k), row(k + 4)).item() for k in range(4)]
    far = torch.dist(row(0), row(1)).item()
    assert max(after) < 0.05 * far and min(before) > 0.2 * far
    assert abs(torch.stack([row(k) for k in range(8)]).std().item() - model.config.initializer_range) < 0.01


def test_sid_init_values_are_checked_per_base(pipeline, tmp_path):
    args = ["--config", CONFIG, "--dataset_dir", str(pipeline[0]), "--sid_dir", str(pipeline[1]),
            "--output_dir", str(tmp_path / "x")]
    with pytest.raises(ValueError, match="sid_init='centroids'"):
        main([*args, "--sid_init", "centroids"])  # the tiny LLM: semantic | mean
    with pytest.raises(ValueError, match="sid_init='mean'"):
        main([*args, "--model_name_or_path", "scratch", "--mode", "full", "--weight_title2sid", "0",
              "--sid_init", "mean"])
    with pytest.raises(ValueError, match="needs RQ codebooks"):  # the handmade tiny artifact has none
        main([*args, "--model_name_or_path", "scratch", "--mode", "full", "--weight_title2sid", "0",
              "--sid_init", "centroids", "--max_steps", "1"])
