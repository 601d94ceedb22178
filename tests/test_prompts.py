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


def test_main_task_prompt_is_the_same_for_every_stage(chat_tok):
    # SFT builds examples, RL and eval call next_item_prompt directly: all must agree byte for byte.
    sft = build_example("seq_sid", chat_tok, sid="<a_5><b_5>", history_sids=SIDS[:5])
    assert sft["prompt"] == next_item_prompt(SIDS[:5], chat_tok) and sft["completion"] == "<a_5><b_5>"


def test_alignment_tasks(chat_tok):
    t2s = build_example("title2sid", chat_tok, sid="<a_1><b_1>", title="Red Stapler")
    assert '"Red Stapler"' in t2s["prompt"] and t2s["completion"] == "<a_1><b_1>"
    s2t = build_example("sid2title", chat_tok, sid="<a_1><b_1>", title="Red Stapler")
    assert "<a_1><b_1>" in s2t["prompt"] and s2t["completion"] == "Red Stapler"
    st = build_example("seq_title", chat_tok, sid="<a_1><b_1>", history_titles=["Pen", "Ink"])
    assert '"Pen", "Ink"' in st["prompt"]
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        build_example("nope", chat_tok, sid="x")
