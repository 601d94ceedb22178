"""decoding.recommend: prefill-once trie beam search == HF beam search == exact reference; bad input fails loudly."""

from __future__ import annotations

import numpy as np
import pytest
from test_decoding_fixtures import histories_for, sid_model, small_catalogue

from decoding.catalogue import Catalogue
from decoding.recommend import recommend, recommend_with_generate
from decoding.reference import exact_recommend, exact_scores


def assert_same_ranking(got, want, atol=1e-4):
    """Same items in the same order, scores equal up to float noise (order may differ only inside a near-tie)."""
    assert len(got) == len(want)
    for (gi, gs), (wi, ws) in zip(got, want):
        assert gs == pytest.approx(ws, abs=atol)
        if gi != wi:  # only acceptable inside a tie
            assert dict(want).get(gi, np.inf) == pytest.approx(gs, abs=atol), (got, want)


@pytest.fixture(scope="module")
def wide():
    """150 items, 3 levels x 6 codes, 2 domains: every prefix has >= 5 continuations in reach of 5 beams."""
    catalogue = small_catalogue(n=150, size=6, n_domains=2, seed=1)
    model, tok = sid_model(catalogue, seed=1)
    return catalogue, model, tok


@pytest.mark.parametrize("num_beams", [5, 8])
def test_prefill_once_equals_hf_beam_search(wide, num_beams):
    catalogue, model, tok = wide
    histories = histories_for(catalogue, lengths=(1, 4, 7, 2))
    domains = ["d0", None, "d1", "d0"]
    fast = recommend(model, tok, catalogue, histories, k=num_beams, domains=domains, num_beams=num_beams,
                     show_progress=False)
    hf = recommend_with_generate(model, tok, catalogue, histories, k=num_beams, domains=domains,
                                 num_beams=num_beams, show_progress=False)
    for got, want in zip(fast, hf):
        assert_same_ranking(got, want)


def test_beam_with_enough_beams_equals_exact_reference():
    catalogue = small_catalogue(n=30, size=4, n_domains=2, seed=2)
    model, tok = sid_model(catalogue, seed=2)
    histories = histories_for(catalogue, lengths=(2, 5, 1))
    domains = ["d0", "d1", None]
    exact = [exact_scores(model, tok, catalogue, h, d) for h, d in zip(histories, domains)]
    fast = recommend(model, tok, catalogue, histories, k=10, domains=domains, num_beams=30, show_progress=False)
    for got, want in zip(fast, exact):
        assert_same_ranking(got, want[:10])
    # with fewer beams the ranking may be approximate, but every score is still the exact sequence log-prob
    narrow = recommend(model, tok, catalogue, histories, k=3, domains=domains, num_beams=3, show_progress=False)
    for recs, want in zip(narrow, exact):
        for item, score in recs:
            assert score == pytest.approx(dict(want)[item], abs=1e-4)
    assert exact_recommend(model, tok, catalogue, histories[:1], k=4, domains=domains[:1]) == [exact[0][:4]]


def test_items_belong_to_the_users_domain_and_are_unique(wide):
    catalogue, model, tok = wide
    histories = histories_for(catalogue, lengths=(3, 3, 5))
    domains = ["d1", "d0", None]
    recs = recommend(model, tok, catalogue, histories, k=10, domains=domains, num_beams=12, show_progress=False)
    for recs_u, domain in zip(recs, domains):
        items = [i for i, _ in recs_u]
        assert len(items) == 10 == len(set(items))
        assert all(domain is None or catalogue.domains[catalogue.row(i)] == domain for i in items)
        scores = [s for _, s in recs_u]
        assert scores == sorted(scores, reverse=True)


def test_more_beams_than_valid_items_drops_junk_and_duplicates():
    sids = {"a": "<a_0><b_0>", "b": "<a_0><b_1>", "c": "<a_1><b_0>", "x": "<a_2><b_2>", "y": "<a_3><b_0>"}
    catalogue = Catalogue.from_sids(sids, domains={"a": "S", "b": "S", "c": "S", "x": "T", "y": "T"})
    model, tok = sid_model(catalogue, seed=4)
    histories = [["a"], ["x", "b"]]
    want = exact_recommend(model, tok, catalogue, histories, k=3, domains=["S", "S"])
    hf = recommend_with_generate(model, tok, catalogue, histories, k=3, domains=["S", "S"], num_beams=6,
                                 show_progress=False)  # HF pads 6 beams with copies scored ~ -1e9
    fast = recommend(model, tok, catalogue, histories, k=3, domains=["S", "S"], num_beams=6, show_progress=False)
    for got_hf, got_fast, ref in zip(hf, fast, want):
        assert_same_ranking(got_hf, ref)
        assert_same_ranking(got_fast, ref)
        assert {i for i, _ in ref} == {"a", "b", "c"}


def test_results_do_not_depend_on_batch_size(wide):
    catalogue, model, tok = wide
    histories = histories_for(catalogue, lengths=(1, 6, 3))
    one = recommend(model, tok, catalogue, histories, k=5, batch_size=1, show_progress=False)
    all_ = recommend(model, tok, catalogue, histories, k=5, batch_size=16, show_progress=False)
    for a, b in zip(one, all_):
        assert_same_ranking(a, b)


def test_catalogue_from_artifact_and_dataset(tmp_path):
    from sft_fixtures import make_tiny_pipeline

    from data_builders.dataset import load_rec_dataset
    from sft.models import load_causal_lm
    from tokenization.artifact import load_sid_artifact
    from tokenization.vocab import extend_vocabulary

    dataset_dir, sid_dir = make_tiny_pipeline(tmp_path, domains=("Mini", "Other"))
    artifact, dataset = load_sid_artifact(sid_dir), load_rec_dataset(dataset_dir)
    catalogue = Catalogue.from_artifact(artifact, dataset)
    assert [catalogue.sid_string(i) for i in artifact.item_ids] == artifact.sid_strings()
    assert catalogue.domain_names() == ["Mini", "Other"]
    assert catalogue.domain_size("Mini") == 6 and catalogue.domain_size(None) == 12
    assert catalogue.domain_size("Books") == 0
    model, tok = load_causal_lm("tiny")
    extend_vocabulary(model, tok, artifact, init="mean")
    history = artifact.item_ids[:2]
    recs = recommend(model, tok, catalogue, [history], k=3, domains=["Other"], show_progress=False)[0]
    assert len(recs) == 3 and all(catalogue.domains[catalogue.row(i)] == "Other" for i, _ in recs)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small():
    catalogue = small_catalogue(n=20, size=4, n_domains=2, seed=5)
    model, tok = sid_model(catalogue, seed=5)
    return catalogue, model, tok


def test_unknown_history_item_raises(small):
    catalogue, model, tok = small
    with pytest.raises(KeyError, match="history 1: item 'nope' is not in the catalogue"):
        recommend(model, tok, catalogue, [["item1"], ["item2", "nope"]], k=2, show_progress=False)


def test_tokenizer_without_sid_tokens_raises(small):
    from sft.models import load_causal_lm

    catalogue, _, _ = small
    model, tok = load_causal_lm("tiny")
    with pytest.raises(ValueError, match="SID tokens are not in the tokenizer"):
        recommend(model, tok, catalogue, [["item1"]], k=2, show_progress=False)


def test_model_not_resized_raises(small):
    from sft.models import load_causal_lm

    catalogue, _, _ = small
    model, tok = load_causal_lm("tiny")
    tok.add_tokens(catalogue.tokens)
    with pytest.raises(ValueError, match="resize"):
        recommend(model, tok, catalogue, [["item1"]], k=2, show_progress=False)


def test_unknown_domain_raises(small):
    catalogue, model, tok = small
    with pytest.raises(KeyError, match="no trie for domain 'Books'"):
        recommend(model, tok, catalogue, [["item1"]], k=2, domains=["Books"], show_progress=False)


def test_k_larger_than_catalogue_or_beams_raises(small):
    catalogue, model, tok = small
    with pytest.raises(ValueError, match="larger than the catalogue of domain 'd0'"):
        recommend(model, tok, catalogue, [["item1"]], k=11, domains=["d0"], show_progress=False)
    with pytest.raises(ValueError, match="larger than the catalogue"):
        recommend(model, tok, catalogue, [["item1"]], k=21, show_progress=False)
    with pytest.raises(ValueError, match="num_beams=3 < k=5"):
        recommend(model, tok, catalogue, [["item1"]], k=5, num_beams=3, show_progress=False)
    assert len(recommend(model, tok, catalogue, [["item1"]], k=10, domains=["d0"], show_progress=False)[0]) == 10


def test_catalogue_rejects_bad_input():
    with pytest.raises(ValueError, match="different numbers of levels"):
        Catalogue.from_sids({"a": "<a_1><b_2>", "b": "<a_1>"})
    with pytest.raises(ValueError, match="no domain"):
        Catalogue.from_sids({"a": "<a_1>"}, domains={"b": "X"})
    with pytest.raises(ValueError, match="same SID"):
        Catalogue.from_sids({"a": "<a_1>", "b": ["<a_1>"]}).trie(sid_model(small_catalogue(4, 1, 4, 0))[1])


def test_prompts_are_the_shared_text_with_atomic_sid_tokens():
    """The decoding prompt for items x, y is the hand-written next-item prompt, and after tokenisation every SID
    token is one token id, in history order (a SID split into pieces could never match the trie)."""
    from decoding.recommend import encode_prompts, history_prompts

    catalogue = Catalogue.from_sids({"x": "<a_1><b_2>", "y": "<a_3><b_0>", "z": "<a_1><b_0>"})
    _, tok = sid_model(catalogue)
    (prompt,) = history_prompts(tok, catalogue, [["x", "y"]])
    assert prompt == ("<|im_start|>system\nYou are a recommender system. Answer with item identifiers only."
                      "<|im_end|>\n<|im_start|>user\nA user interacted with these items, oldest first: "
                      "<a_1><b_2>, <a_3><b_0>. Which item will the user interact with next?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    ids, mask = encode_prompts(tok, [prompt, history_prompts(tok, catalogue, [["z"]])[0]])
    sid_ids = dict(zip(tok.convert_tokens_to_ids(catalogue.tokens), catalogue.tokens))
    assert [sid_ids[i] for i in ids[0].tolist() if i in sid_ids] == ["<a_1>", "<b_2>", "<a_3>", "<b_0>"]
    assert [sid_ids[i] for i in ids[1].tolist() if i in sid_ids] == ["<a_1>", "<b_0>"]
    assert mask[0].all() and not mask[1, 0] and mask[1, -1]  # the shorter prompt is left-padded
