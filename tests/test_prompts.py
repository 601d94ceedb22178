"""The one prompt builder: chat vs plain template, truncation, tasks, identical prompts across stages."""

from __future__ import annotations

import pytest

from data_builders.prompts import PLAIN_TEMPLATE, SYSTEM, build_example, next_item_prompt
from sft.models import build_tiny_tokenizer

SIDS = [f"<a_{i}><b_{i}>" for i in range(12)]


@pytest.fixture
def chat_tok():
    return build_tiny_tokenizer()


@pytest.fixture
def plain_tok():
    tok = build_tiny_tokenizer()
    tok.chat_template = None
    return tok


def test_chat_template_used_with_fixed_system_message(chat_tok):
    prompt = next_item_prompt(SIDS[:2], chat_tok)
    assert prompt.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n") and "<a_0><b_0>, <a_1><b_1>." in prompt


def test_plain_template_without_chat_template(plain_tok):
    prompt = next_item_prompt(SIDS[:1], plain_tok)
    assert prompt.startswith("### Instruction:\n") and prompt.endswith(PLAIN_TEMPLATE.split("{instruction}")[1])


def test_history_keeps_the_last_n_items_oldest_first(plain_tok):
    prompt = next_item_prompt(SIDS, plain_tok, max_history=3)
    assert "<a_9><b_9>, <a_10><b_10>, <a_11><b_11>." in prompt and "<a_8>" not in prompt
    with pytest.raises(ValueError, match="empty history"):
        next_item_prompt([], plain_tok)


CHAT_SEQ_SID = (  # written out by hand from the tiny tokenizer's chat template and INSTRUCTIONS["seq_sid"]
    "<|im_start|>system\nYou are a recommender system. Answer with item identifiers only.<|im_end|>\n"
    "<|im_start|>user\nA user interacted with these items, oldest first: <a_0><b_0>, <a_1><b_1>. Which item will the "
    "user interact with next?<|im_end|>\n<|im_start|>assistant\n"
)
PLAIN_SEQ_SID = ("### Instruction:\nA user interacted with these items, oldest first: <a_0><b_0>, <a_1><b_1>. Which "
                 "item will the user interact with next?\n### Response:\n")


@pytest.mark.parametrize("which, expected", [("chat", CHAT_SEQ_SID), ("plain", PLAIN_SEQ_SID)])
def test_main_task_prompt_is_the_hand_written_text_in_every_stage(chat_tok, plain_tok, which, expected):
    """SFT (data_builders.examples), evaluation / RL (decoding.recommend.history_prompts) and next_item_prompt all
    give exactly this text for the history [item0, item1]."""
    from data_builders.examples import sequence_examples
    from decoding.catalogue import Catalogue
    from decoding.recommend import history_prompts

    tok = chat_tok if which == "chat" else plain_tok
    catalogue = Catalogue.from_sids({"item0": SIDS[0], "item1": SIDS[1], "item5": SIDS[5]})
    assert next_item_prompt(SIDS[:2], tok) == expected
    assert build_example("seq_sid", tok, sid=SIDS[5], history_sids=SIDS[:2]) == {"prompt": expected,
                                                                                 "completion": "<a_5><b_5>"}
    (sft,) = sequence_examples([{"history": ["item0", "item1"], "target": "item5", "user_id": "u", "domain": "d"}],
                               catalogue, tok)
    assert sft["prompt"] == expected and sft["completion"] == "<a_5><b_5>"
    assert history_prompts(tok, catalogue, [["item0", "item1"]]) == [expected]


def test_alignment_tasks(plain_tok):
    def plain(instruction):
        return f"### Instruction:\n{instruction}\n### Response:\n"

    t2s = build_example("title2sid", plain_tok, sid="<a_1><b_1>", title="Red Stapler")
    assert t2s == {"prompt": plain('Which item identifier has the title "Red Stapler"?'), "completion": "<a_1><b_1>"}
    s2t = build_example("sid2title", plain_tok, sid="<a_1><b_1>", title="Red Stapler")
    assert s2t == {"prompt": plain("What is the title of item <a_1><b_1>?"), "completion": "Red Stapler"}
    st = build_example("seq_title", plain_tok, sid="<a_1><b_1>", history_titles=["Pen", "Ink"])
    assert st == {"prompt": plain('A user interacted with these items, oldest first: "Pen", "Ink". Which item will the '
                                  "user interact with next?"), "completion": "<a_1><b_1>"}
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        build_example("nope", plain_tok, sid="x")
