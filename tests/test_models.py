"""The causal-LM loader: tiny models offline, layer truncation, clear errors, the embedded GGUF model (slow)."""

from __future__ import annotations

import pytest
import torch

from sft.models import build_tiny_tokenizer, load_causal_lm


@pytest.mark.parametrize("spec", ["tiny", "tiny:qwen2"])
def test_tiny_model_loads_and_generates_offline(spec):
    model, tok = load_causal_lm(spec)
    ids = tok("hello", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, ids["input_ids"].shape[1] + 4)
    assert model.dtype == torch.float32 and not model.training


def test_tiny_is_deterministic_per_seed():
    a, _ = load_causal_lm("tiny", seed=1)
    b, _ = load_causal_lm("tiny", seed=1)
    c, _ = load_causal_lm("tiny", seed=2)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_tokenizer_round_trips_and_sid_tokens_are_atomic():
    tok = build_tiny_tokenizer()
    text = "Stapler, 100 sheets — ünïcode"
    assert tok.decode(tok(text)["input_ids"]) == text
    tok.add_tokens(["<a_1>", "<b_2>", "<c_3>"])
    assert tok.convert_ids_to_tokens(tok("<a_1><b_2><c_3>")["input_ids"]) == ["<a_1>", "<b_2>", "<c_3>"]


def test_layer_truncation():
    model, _ = load_causal_lm("tiny", num_layers=1)
    assert len(model.model.layers) == 1 and model.config.num_hidden_layers == 1
    model(torch.tensor([[1, 2, 3]]))  # still runs
    with pytest.raises(ValueError, match="num_layers: must be in 1..2"):
        load_causal_lm("tiny", num_layers=3)


def test_unknown_specs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown embedded model 'embedded:gpt5'"):
        load_causal_lm("embedded:gpt5")
    with pytest.raises(FileNotFoundError, match="allow_download=True"):
        load_causal_lm("nobody/no-such-model")


@pytest.mark.slow
def test_embedded_smollm2_gives_a_sane_reply(tmp_path, monkeypatch):
    monkeypatch.setenv("GENREC_CACHE", str(tmp_path))  # exercise the GGUF -> HF conversion from scratch
    model, tok = load_causal_lm("embedded:smollm2-135m")
    assert (tmp_path / "models" / "embedded-smollm2-135m" / "config.json").exists()
    assert model.config.num_hidden_layers == 30 and len(tok) == 49152
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    reply = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply
    again, _ = load_causal_lm("embedded:smollm2-135m")  # second load comes from the cached checkpoint
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(model(ids).logits, again(ids).logits)
