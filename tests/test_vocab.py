"""Vocabulary extension with SID tokens (tokenization.vocab) on the in-process tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sft.models import load_causal_lm
from tokenization.artifact import SidArtifact
from tokenization.collisions import add_dedup_level
from tokenization.vocab import check_atomic, check_sid_vocabulary, extend_vocabulary, sid_token_ids

WORDS = ["red", "blue", "pen", "lamp", "desk", "paper", "clip", "stapler"]


def make_artifact(n: int = 40, sizes=(4, 4, 4), seed: int = 0) -> tuple[SidArtifact, dict[str, str]]:
    """A small in-memory artifact (dedup level added) and {item_id: title}."""
    rng = np.random.default_rng(seed)
    codes = add_dedup_level(np.stack([rng.integers(0, s, n) for s in sizes], axis=1))
    ids = [f"Office:{i}" for i in range(n)]
    meta = {"codebook_sizes": [*sizes, int(codes[:, -1].max()) + 1], "vocab_init": "semantic"}
    titles = {item_id: " ".join(rng.choice(WORDS, 2)) for item_id in ids}
    return SidArtifact(ids, codes, meta), titles


def test_sid_string_tokenises_to_one_id_per_level_and_round_trips():
    model, tok = load_causal_lm("tiny")
    artifact, titles = make_artifact()
    report = extend_vocabulary(model, tok, artifact, init="semantic", dataset=titles)
    ids = tok("<a_1><b_2><c_3>", add_special_tokens=False)["input_ids"]
    assert ids == tok.convert_tokens_to_ids(["<a_1>", "<b_2>", "<c_3>"])
    assert tok.decode(ids, skip_special_tokens=True) == "<a_1><b_2><c_3>"  # not special: TRL keeps them
    assert "<a_1>" not in tok.all_special_tokens
    assert report["n_tokens"] == len(artifact.all_tokens()) == sum(artifact.codebook_sizes)
    assert sid_token_ids(tok, artifact) == list(range(report["first_token_id"], report["last_token_id"] + 1))
    text = "history: " + artifact.sid_string("Office:3") + " next"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_padded_matrix_never_shrinks_and_new_rows_are_initialised():
    model, tok = load_causal_lm("tiny")
    padded = len(tok) + 100
    model.resize_token_embeddings(padded)
    with torch.no_grad():
        model.get_input_embeddings().weight[len(tok):] = float("nan")  # leftover rows must not leak through
    artifact, _ = make_artifact()
    report = extend_vocabulary(model, tok, artifact, init="mean")
    weight = model.get_input_embeddings().weight
    assert report["rows_before"] == report["rows_after"] == padded == weight.shape[0]
    new = weight[report["first_token_id"]:report["last_token_id"] + 1]
    assert torch.isfinite(new).all()
    assert torch.allclose(new, weight[:report["vocab_before"]].mean(0).expand_as(new))


def test_matrix_grows_when_needed():
    model, tok = load_causal_lm("tiny")
    rows = model.get_input_embeddings().weight.shape[0]
    artifact, titles = make_artifact()
    report = extend_vocabulary(model, tok, artifact, dataset=titles)
    assert report["rows_after"] == max(rows, len(tok)) == model.get_input_embeddings().weight.shape[0]
    assert model.config.vocab_size == report["rows_after"]


def test_semantic_rows_match_hand_computation_and_differ_from_mean():
    artifact, titles = make_artifact()
    model_s, tok_s = load_causal_lm("tiny")
    base = model_s.get_input_embeddings().weight.detach().clone()
    rep = extend_vocabulary(model_s, tok_s, artifact, init="semantic", dataset=titles)
    model_m, tok_m = load_causal_lm("tiny")
    extend_vocabulary(model_m, tok_m, artifact, init="mean")
    first, last = rep["first_token_id"], rep["last_token_id"] + 1
    sem = model_s.get_input_embeddings().weight[first:last]
    mean = model_m.get_input_embeddings().weight[first:last]
    assert torch.isfinite(sem).all() and not torch.allclose(sem, mean)
    # <b_2>: mean over items with level-1 code 2 of the mean of their title tokens' rows
    members = [i for i, item_id in enumerate(artifact.item_ids) if artifact.codes[i, 1] == 2]
    expected = torch.stack([base[tok_s(titles[artifact.item_ids[i]], add_special_tokens=False)["input_ids"]]
                            .mean(0) for i in members]).mean(0)
    got = model_s.get_input_embeddings().weight[tok_s.convert_tokens_to_ids("<b_2>")]
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("spec", ["tiny", "tiny:qwen2"])
def test_tied_embeddings_stay_tied(spec):
    model, tok = load_causal_lm(spec)
    artifact, titles = make_artifact()
    report = extend_vocabulary(model, tok, artifact, dataset=titles)
    assert report["tied"]
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    logits = model(torch.tensor([[report["last_token_id"]]])).logits
    assert logits.shape[-1] == model.get_input_embeddings().weight.shape[0] and torch.isfinite(logits).all()


def test_untied_output_rows_are_initialised_too():
    from transformers import AutoModelForCausalLM

    tied_model, tok = load_causal_lm("tiny")
    config = tied_model.config
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config)
    artifact, _ = make_artifact()
    report = extend_vocabulary(model, tok, artifact, init="mean")
    out = model.get_output_embeddings().weight
    assert not report["tied"] and out.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    new = out[report["first_token_id"]:report["last_token_id"] + 1]
    assert torch.allclose(new, out[:report["vocab_before"]].mean(0).expand_as(new))


def test_tokens_already_present_raise():
    model, tok = load_causal_lm("tiny")
    artifact, titles = make_artifact()
    tok.add_tokens(["<b_1>"])
    with pytest.raises(ValueError, match="already in the tokenizer"):
        extend_vocabulary(model, tok, artifact, dataset=titles)


def test_a_tokenizer_that_splits_sid_tokens_raises():
    _, tok = load_causal_lm("tiny")  # SID tokens not added: the byte-level tokenizer splits them
    with pytest.raises(ValueError, match="splits SID token '<a_1>'"):
        check_atomic(tok, ["<a_1>"], [len(tok)])


def test_semantic_init_needs_titles():
    model, tok = load_causal_lm("tiny")
    artifact, _ = make_artifact()
    with pytest.raises(ValueError, match="titles"):
        extend_vocabulary(model, tok, artifact, init="semantic")
    with pytest.raises(ValueError, match="init="):
        extend_vocabulary(model, tok, artifact, init="random")


def test_reload_reproduces_the_vocabulary(tmp_path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    model, tok = load_causal_lm("tiny")
    artifact, titles = make_artifact()
    report = extend_vocabulary(model, tok, artifact, dataset=titles)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2 = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = check_sid_vocabulary(tok2, artifact, model2)
    assert ids == list(range(report["first_token_id"], report["last_token_id"] + 1))
    assert torch.equal(model2.get_input_embeddings().weight[ids], model.get_input_embeddings().weight[ids])
    other, _ = make_artifact(sizes=(5, 4, 4))
    with pytest.raises(ValueError):
        check_sid_vocabulary(tok2, other)


@pytest.mark.slow
def test_extend_embedded_smollm2():
    """The real (embedded) SmolLM2-135M: BPE tokenizer with merges, tied 49,152-row matrix."""
    model, tok = load_causal_lm("embedded:smollm2-135m", num_layers=1)
    artifact, titles = make_artifact(sizes=(256, 256, 256), n=300)
    report = extend_vocabulary(model, tok, artifact, dataset=titles)
    assert report["tied"] and report["rows_after"] >= report["vocab_after"]
    assert len(tok("<a_1><b_2><c_3>", add_special_tokens=False)["input_ids"]) == 3
    prompt = tok.apply_chat_template([{"role": "user", "content": "next: " + artifact.sid_string("Office:0")}],
                                     tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert artifact.sid_string("Office:0") in tok.decode(ids, skip_special_tokens=True)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
