"""decoding.processor + decoding.generation: HF generate only ever produces real items' SIDs, then EOS."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_decoding_fixtures import histories_for, sid_model, small_catalogue
from transformers import GenerationConfig

from decoding.generation import build_generation_config, check_generation_defaults
from decoding.processor import MaskBuffer, SidTrieLogitsProcessor, constrain_rows, constrain_scores
from decoding.recommend import encode_prompts, generate_constrained, history_prompts, recommend_with_generate
from decoding.reference import DictPrefixAllowedTokens, PerRowDictProcessor, allowed_next_tokens

INSTRUCT_DEFAULTS = dict(do_sample=True, top_k=20, top_p=0.8, temperature=0.7, repetition_penalty=1.05)


@pytest.fixture(scope="module")
def setup():
    catalogue = small_catalogue(n=40, size=4, n_domains=2)
    model, tok = sid_model(catalogue)
    return catalogue, model, tok


# ----------------------------------------------------------------------------- unit: the masking rule
def test_constrain_scores_matches_brute_force_and_masks_padded_columns(setup):
    catalogue, _, tok = setup
    trie = catalogue.trie(tok)
    seqs = catalogue.token_ids(tok)
    finished = np.concatenate([seqs, np.full((len(seqs), 1), tok.eos_token_id)], axis=1)  # SID + EOS
    width = len(tok) + 17  # padded lm_head rows beyond the tokenizer
    rng = np.random.default_rng(0)
    for step in range(trie.levels + 2):
        prefixes = np.concatenate([finished[rng.integers(0, len(seqs), 12), :step],
                                   rng.choice(np.unique(seqs), (4, step))])  # real prefixes + random junk
        scores = torch.randn(len(prefixes), width)
        scores[:, len(tok):] = 1e4  # padded rows would win an unmasked argmax
        out = constrain_scores(scores, trie.tables("cpu"), torch.full((len(prefixes),), trie.root(None)),
                               torch.from_numpy(prefixes), tok.eos_token_id, tok.pad_token_id)
        for row, raw, prefix in zip(out, scores, prefixes):
            allowed = set(torch.isfinite(row).nonzero().squeeze(1).tolist())
            expect = allowed_next_tokens(seqs, prefix.tolist(), tok.eos_token_id) or {tok.eos_token_id}
            if step > trie.levels:
                expect = {tok.eos_token_id, tok.pad_token_id}
            assert allowed == expect, (step, prefix)
            assert torch.equal(row[sorted(allowed)], raw[sorted(allowed)])  # allowed ids keep their score


def test_constrain_rows_per_row_depth_equals_uniform_path(setup):
    catalogue, _, tok = setup
    trie, seqs = catalogue.trie(tok), catalogue.token_ids(tok)
    tables, levels = trie.tables("cpu"), trie.levels
    scores = torch.randn(10, len(tok))
    roots = torch.tensor([trie.root("d0"), trie.root("d1")] * 5)
    rows = [np.flatnonzero(np.array(catalogue.domains) == f"d{i % 2}")[i] for i in range(10)]
    full = torch.from_numpy(seqs[rows])  # [10, L], each row in its own domain
    for depth in range(levels + 2):
        prefix = full if depth <= levels else torch.cat([full, torch.full((10, depth - levels), tok.eos_token_id)], 1)
        uniform = constrain_scores(scores, tables, roots, prefix[:, :depth], tok.eos_token_id, tok.pad_token_id)
        per_row = constrain_rows(scores, tables, roots, full, torch.full((10,), depth), tok.eos_token_id,
                                 tok.pad_token_id)
        assert torch.equal(uniform, per_row), depth
    mixed = torch.arange(10) % (levels + 2)  # rows at different steps in one call
    per_row = constrain_rows(scores, tables, roots, full, mixed, tok.eos_token_id, tok.pad_token_id)
    for r in range(10):
        d = int(mixed[r])
        one = constrain_scores(scores[r:r + 1], tables, roots[r:r + 1],
                               torch.cat([full[r:r + 1], full.new_full((1, 2), tok.eos_token_id)], 1)[:, :d],
                               tok.eos_token_id, tok.pad_token_id)
        assert torch.equal(per_row[r:r + 1], one), r


def test_reused_mask_buffer_equals_a_fresh_mask_at_every_step_without_allocating(setup):
    """#11 item 17: the in-place path (one buffer, re-filled over the SID range only) gives exactly the fresh
    tensor's values, step after step, across domains, dead prefixes, finished rows and tampering."""
    catalogue, _, tok = setup
    trie, seqs = catalogue.trie(tok), catalogue.token_ids(tok)
    tables, eos, pad = trie.tables("cpu"), tok.eos_token_id, tok.pad_token_id
    finished = np.concatenate([seqs, np.full((len(seqs), 1), eos), np.full((len(seqs), 1), pad)], axis=1)
    rng = np.random.default_rng(1)
    roots = torch.tensor([trie.root(d) for d in ("d0", "d1", None)] * 6)
    rows = [np.flatnonzero(np.array(catalogue.domains) == d)[i] if d else i
            for i, d in enumerate(["d0", "d1", None] * 6)]
    prefixes = finished[rows]
    prefixes[-3:, :trie.levels] = rng.choice(np.unique(seqs), (3, trie.levels))  # junk: leaves the trie
    buffer, pointers = MaskBuffer(), set()
    for rounds in range(2):  # a second generate call through the same buffer (as recommend_with_generate does)
        for step in range(trie.levels + 2):
            scores = torch.randn(len(roots), len(tok) + 5)
            raw = scores.clone()
            generated = torch.from_numpy(prefixes[:, :step])
            fresh = constrain_scores(scores, tables, roots, generated, eos, pad)
            reused = constrain_scores(scores, tables, roots, generated, eos, pad, buffer=buffer)
            assert torch.equal(reused, fresh), (rounds, step)
            assert torch.equal(scores, raw)  # the input is never written
            pointers.add(reused.data_ptr())
    assert len(pointers) == 1  # one allocation for all 2 x (L+2) steps
    reused[:, 0] = 7.0  # someone else writes into the returned tensor: the next step must not inherit it
    scores = torch.randn(len(roots), len(tok) + 5)
    assert torch.equal(constrain_scores(scores, tables, roots, torch.from_numpy(prefixes[:, :1]), eos, pad,
                                        buffer=buffer),
                       constrain_scores(scores, tables, roots, torch.from_numpy(prefixes[:, :1]), eos, pad))
    with torch.inference_mode():  # inference tensors have no version counter: still exact
        for step in (0, 2, 1):
            generated = torch.from_numpy(prefixes[:, :step])
            assert torch.equal(constrain_scores(scores, tables, roots, generated, eos, pad, buffer=MaskBuffer()),
                               constrain_scores(scores, tables, roots, generated, eos, pad))
    smaller = torch.randn(4, len(tok) + 5)  # another shape (the last, partial batch): a new buffer tensor
    assert torch.equal(constrain_scores(smaller, tables, roots[:4], torch.from_numpy(prefixes[:4, :2]), eos, pad,
                                        buffer=buffer),
                       constrain_scores(smaller, tables, roots[:4], torch.from_numpy(prefixes[:4, :2]), eos, pad))


def test_benchmark_baseline_per_row_processor_masks_exactly_like_ours(setup):
    """The benchmark's stand-in for the peers' per-row processors is a correct trie: same masked scores as
    constrain_scores at every SID step (real prefixes and junk), so the two runs find the same beams."""
    catalogue, _, tok = setup
    trie, seqs = catalogue.trie(tok), catalogue.token_ids(tok)
    prompt = torch.randint(0, 50, (16, 7))
    peer = PerRowDictProcessor(DictPrefixAllowedTokens(seqs, prompt_length=7, eos_token_id=tok.eos_token_id))
    rng = np.random.default_rng(2)
    gen = np.concatenate([seqs[rng.integers(0, len(seqs), 12)], rng.choice(np.unique(seqs), (4, trie.levels))])
    for step in range(trie.levels + 1):
        scores = torch.randn(16, len(tok))
        generated = torch.from_numpy(gen[:, :step])
        ours = constrain_scores(scores, trie.tables("cpu"), torch.full((16,), trie.root(None)), generated,
                                tok.eos_token_id, tok.pad_token_id)
        assert torch.equal(peer(torch.cat([prompt, generated], 1), scores), ours), step


@pytest.mark.parametrize("mode,n", [("greedy", 1), ("beam", 6), ("sample", 6)])
def test_reuse_output_processor_generates_exactly_what_the_allocating_one_does(setup, mode, n):
    catalogue, model, tok = setup
    trie = catalogue.trie(tok)
    histories = histories_for(catalogue, lengths=(1, 3, 6))
    ids, mask = encode_prompts(tok, history_prompts(tok, catalogue, histories))
    roots = [trie.root(d) for d in ("d0", None, "d1")]
    config = build_generation_config(sid_length=trie.levels, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, mode=mode, num_beams=n, num_return_sequences=n)
    outs = []
    for reuse in (False, True):
        torch.manual_seed(5)
        proc = SidTrieLogitsProcessor(trie, roots, tok.eos_token_id, tok.pad_token_id, reuse_output=reuse)
        outs.append(generate_constrained(model, ids, mask, proc, config))
    old, new = outs
    assert torch.equal(old.sequences, new.sequences)
    stored = "scores" if mode == "beam" else "logits"  # what each mode's config keeps
    assert all(torch.equal(a, b) for a, b in zip(getattr(old, stored), getattr(new, stored)))
    if mode == "beam":
        assert torch.equal(old.sequences_scores, new.sequences_scores)
        assert len({s.data_ptr() for s in new.scores}) == len(new.scores)  # HF stored copies, not the buffer


def test_trie_beam_search_keeps_only_last_logits_through_a_lora_model(setup, monkeypatch):
    """#11 small item: PeftModel.forward takes **kwargs, so a signature check on it missed ``logits_to_keep`` and a
    LoRA checkpoint computed [B, P, V] logits at prefill. Now the prefill returns [B, 1, V], with the same beams."""
    from peft import LoraConfig, get_peft_model

    import decoding.beam as beam

    catalogue, model, tok = setup
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                           init_lora_weights=False))  # random B: the adapter acts
    trie = catalogue.trie(tok)
    ids, mask = encode_prompts(tok, history_prompts(tok, catalogue, histories_for(catalogue)))
    roots = torch.tensor([trie.root(d) for d in ("d0", None, "d1", None)])
    shapes = []
    lora.get_base_model().register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.logits.shape)))

    def search():
        shapes.clear()
        return beam.trie_beam_search(lora, ids, mask, trie.tables("cpu"), roots, 6, tok.eos_token_id)

    kept = search()
    assert shapes[0] == (len(ids), 1, lora.get_output_embeddings().weight.shape[0])  # prefill: last position only
    monkeypatch.setattr(beam, "_accepts_logits_to_keep", lambda m: False)  # the old path: full prompt logits
    full = search()
    assert shapes[0][1] == ids.shape[1]
    assert torch.equal(kept.tokens, full.tokens) and torch.equal(kept.leaves, full.leaves)
    assert torch.allclose(kept.scores, full.scores, atol=1e-5)


# ----------------------------------------------------------------------------- end to end through generate
def _generate(model, tok, catalogue, histories, domains, mode, n, seed=0):
    trie = catalogue.trie(tok)
    ids, mask = encode_prompts(tok, history_prompts(tok, catalogue, histories))
    roots = [trie.root(d) for d in domains]
    processor = SidTrieLogitsProcessor(trie, roots, tok.eos_token_id, tok.pad_token_id)
    config = build_generation_config(sid_length=trie.levels, eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id, mode=mode, num_beams=n, num_return_sequences=n)
    torch.manual_seed(seed)
    out = generate_constrained(model, ids, mask, processor, config)
    return out, ids, trie, roots


def _assert_all_valid(out, ids, trie, roots, n, eos):
    generated = out.sequences[:, ids.shape[1]:]  # [B*n, L+1]
    assert generated.shape[1] == trie.levels + 1
    for r, row in enumerate(generated.tolist()):
        root = roots[r // n]
        assert trie.item_of(root, row[: trie.levels]) >= 0, row  # a real item of this user's domain
        assert row[trie.levels] == eos  # EOS right after the complete SID


@pytest.mark.parametrize("mode,n", [("greedy", 1), ("beam", 4), ("sample", 8)])
def test_every_generated_sid_is_valid_with_left_padding_and_mixed_domains(setup, mode, n):
    catalogue, model, tok = setup
    histories = histories_for(catalogue, lengths=(1, 3, 6, 2, 5))
    assert len({len(h) for h in histories}) > 1  # different prompt lengths -> left padding
    domains = ["d0", None, "d1", "d1", "d0"]
    out, ids, trie, roots = _generate(model, tok, catalogue, histories, domains, mode, n)
    assert (ids == tok.pad_token_id).any()
    _assert_all_valid(out, ids, trie, roots, n, tok.eos_token_id)


def test_sampling_hot_and_many_samples_stays_valid(setup):
    catalogue, model, tok = setup
    histories = histories_for(catalogue, lengths=(2, 4))
    for seed in range(2):
        out, ids, trie, roots = _generate(model, tok, catalogue, histories, ["d0", "d1"], "sample", 24, seed)
        _assert_all_valid(out, ids, trie, roots, 24, tok.eos_token_id)


def test_cross_prefix_combinations_are_never_sampled():
    """(a0,b0,c0) and (a1,b1,c1) exist, (a0,b1,..) and (..,b0,c1) do not: a (position, previous token) table
    would allow them; the trie must not. Hot sampling tries every reachable path many times."""
    from decoding.catalogue import Catalogue

    sids = {"x": "<a_0><b_0><c_0>", "y": "<a_1><b_1><c_1>", "z": "<a_0><b_2><c_1>", "w": "<a_2><b_0><c_2>"}
    catalogue = Catalogue.from_sids(sids)
    model, tok = sid_model(catalogue, seed=3, scale=0.1)  # flat distribution: every branch gets sampled
    out, ids, trie, roots = _generate(model, tok, catalogue, [["x"], ["y", "z"]], [None, None], "sample", 64)
    _assert_all_valid(out, ids, trie, roots, 64, tok.eos_token_id)
    generated = {tuple(r) for r in out.sequences[:, ids.shape[1]:ids.shape[1] + 3].tolist()}
    assert generated <= {tuple(catalogue.token_ids(tok)[i]) for i in range(4)} and len(generated) >= 3


def test_padded_vocabulary_rows_never_generated():
    catalogue = small_catalogue(n=30, size=4, n_domains=0)
    model, tok = sid_model(catalogue, extra_rows=21)
    with torch.no_grad():  # make the padded rows dominate every unconstrained logit
        head = model.get_output_embeddings().weight
        hidden = model.model(**tok(["x"], return_tensors="pt")).last_hidden_state[0, -1]
        head[len(tok):] = 50 * hidden / hidden.norm()
    histories = histories_for(catalogue, lengths=(1, 2))
    out, ids, trie, roots = _generate(model, tok, catalogue, histories, [None, None], "greedy", 1)
    _assert_all_valid(out, ids, trie, roots, 1, tok.eos_token_id)
    assert model.get_output_embeddings().weight.shape[0] > len(tok)


def test_processor_serves_one_generate_call(setup):
    catalogue, _, tok = setup
    trie = catalogue.trie(tok)
    proc = SidTrieLogitsProcessor(trie, [trie.root(None)], tok.eos_token_id)
    proc(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, len(tok)))
    proc(torch.zeros(1, 6, dtype=torch.long), torch.zeros(1, len(tok)))
    with pytest.raises(RuntimeError, match="one generate call"):
        proc(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, len(tok)))
    proc.reset()
    proc(torch.zeros(1, 9, dtype=torch.long), torch.zeros(1, len(tok)))
    assert proc.prompt_length == 9


# ----------------------------------------------------------------------------- generation config: no leaks
def test_generation_config_sets_every_decoding_field():
    cfg = build_generation_config(sid_length=3, eos_token_id=2, pad_token_id=0, mode="sample",
                                  num_return_sequences=4, temperature=0.9)
    d = cfg.to_dict()
    for name in ("do_sample", "num_beams", "num_return_sequences", "top_k", "top_p", "min_p", "temperature",
                 "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "eos_token_id", "pad_token_id",
                 "max_new_tokens", "min_new_tokens", "early_stopping", "typical_p", "epsilon_cutoff", "eta_cutoff",
                 "output_scores", "return_dict_in_generate", "guidance_scale", "renormalize_logits"):
        assert d[name] is not None, name
    assert (cfg.top_k, cfg.top_p, cfg.min_p, cfg.max_new_tokens, cfg.min_new_tokens) == (0, 1.0, 0.0, 4, 3)
    with pytest.raises(ValueError, match="mode"):
        build_generation_config(sid_length=3, eos_token_id=2, pad_token_id=0, mode="contrastive")


@pytest.mark.parametrize("mode", ["beam", "greedy"])
def test_instruct_sampling_defaults_on_the_model_do_not_change_results(setup, mode):
    catalogue, model, tok = setup
    histories = histories_for(catalogue, lengths=(1, 3, 6, 2))
    kwargs = dict(k=4, domains=["d0", None, "d1", None], mode=mode, show_progress=False)
    clean = recommend_with_generate(model, tok, catalogue, histories, **kwargs)
    saved = model.generation_config
    try:
        model.generation_config = GenerationConfig(**saved.to_dict())
        for name, value in INSTRUCT_DEFAULTS.items():
            setattr(model.generation_config, name, value)
        # negative control: without an explicit config, generate *would* sample with these defaults
        merged, _ = model._prepare_generation_config(GenerationConfig(num_beams=4, max_new_tokens=4))
        assert merged.do_sample and merged.top_k == 20
        torch.manual_seed(123)
        leaked = recommend_with_generate(model, tok, catalogue, histories, **kwargs)
    finally:
        model.generation_config = saved
    assert leaked == clean


def test_fields_that_cannot_be_overridden_raise(setup):
    _, model, _ = setup
    saved = model.generation_config
    try:
        model.generation_config = GenerationConfig(**saved.to_dict())
        model.generation_config.suppress_tokens = [5]
        with pytest.raises(ValueError, match="suppress_tokens"):
            check_generation_defaults(model)
    finally:
        model.generation_config = saved
    check_generation_defaults(model)


@pytest.mark.slow
def test_smollm2_with_instruct_generation_defaults_gives_identical_constrained_results():
    """The real embedded Instruct model (2 layers kept for speed), SID tokens added as ordinary tokens."""
    from decoding.recommend import recommend
    from sft.models import load_causal_lm

    catalogue = small_catalogue(n=60, size=5, n_domains=2, seed=3)
    model, tok = load_causal_lm("embedded:smollm2-135m", num_layers=2)
    tok.add_tokens(catalogue.tokens)
    model.resize_token_embeddings(len(tok), mean_resizing=True)
    histories = histories_for(catalogue, lengths=(2, 5, 1))
    kwargs = dict(k=5, domains=["d0", "d1", None], show_progress=False)
    clean_beam = recommend_with_generate(model, tok, catalogue, histories, num_beams=8, **kwargs)
    clean_fast = recommend(model, tok, catalogue, histories, num_beams=8, **kwargs)
    for name, value in INSTRUCT_DEFAULTS.items():
        setattr(model.generation_config, name, value)
    torch.manual_seed(0)
    assert recommend_with_generate(model, tok, catalogue, histories, num_beams=8, **kwargs) == clean_beam
    assert recommend(model, tok, catalogue, histories, num_beams=8, **kwargs) == clean_fast
    out, ids, trie, roots = _generate(model, tok, catalogue, histories, ["d0", "d1", None], "sample", 16)
    _assert_all_valid(out, ids, trie, roots, 16, tok.eos_token_id)
