"""The one prompt/example builder used by SFT, RL (GRPO, DPO) and evaluation.

Every stage calls :func:`next_item_prompt` for the main task, so the prompt for a given history is byte-identical
across stages (peers drifted: different wording in SFT, RL and eval). Tasks:

* ``seq_sid``   — history SIDs -> next item's SID (the main task)
* ``seq_title`` — history titles -> next item's SID
* ``title2sid`` — an item's title -> its SID (alignment)
* ``sid2title`` — an item's SID -> its title (alignment)

The prompt uses the tokenizer's chat template when it has one (with a short fixed system message, so a model's
default system prompt cannot change it), a plain ``### Instruction / ### Response`` template otherwise. SIDs are
written without spaces (``<a_12><b_5><c_200>``) so each SID token stays one token. The completion never includes
the prompt, so a prompt/completion dataset puts the loss on the completion only.

A SID-only tokenizer (the TIGER-style ``scratch`` model of sft/models.py, recognised by its separator token
:data:`SID_SEP`) has no words at all: its prompt is the history SIDs, each followed by :data:`SID_SEP`
(``<a_1><b_2><|sep|><a_3><b_4><|sep|>``), and only ``seq_sid`` applies.
"""

from __future__ import annotations

from data_builders.cli import UserError

from typing import Sequence

TASKS = ("seq_sid", "seq_title", "title2sid", "sid2title")
SYSTEM = "You are a recommender system. Answer with item identifiers only."
INSTRUCTIONS = {
    "seq_sid": "A user interacted with these items, oldest first: {history}. Which item will the user interact "
               "with next?",
    "seq_title": "A user interacted with these items, oldest first: {history}. Which item will the user interact "
                 "with next?",
    "title2sid": "Which item identifier has the title \"{title}\"?",
    "sid2title": "What is the title of item {sid}?",
}
PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n### Response:\n"
DEFAULT_MAX_HISTORY = 10
SID_SEP = "<|sep|>"  # the separator token of SID-only tokenizers: ends every history item


def is_sid_only(tokenizer) -> bool:
    """True for a tokenizer whose vocabulary is special tokens + SID tokens (no text can be written)."""
    return getattr(tokenizer, "sep_token", None) == SID_SEP


def render_prompt(instruction: str, tokenizer) -> str:
    """Wrap an instruction in the tokenizer's chat template (generation prompt added) or the plain template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": instruction}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(instruction=instruction)


def _history_text(entries: Sequence[str], max_history: int, joiner: str) -> str:
    if not entries:
        raise UserError("empty history: a next-item prompt needs at least one item")
    if max_history < 1:
        raise UserError(f"max_history must be >= 1, got {max_history}")
    return joiner.join(entries[-max_history:])


def next_item_prompt(history_sids: Sequence[str], tokenizer, max_history: int = DEFAULT_MAX_HISTORY) -> str:
    """The main-task prompt: the last ``max_history`` SIDs (oldest first) -> "which item next?".

    >>> from sft.models import build_tiny_tokenizer
    >>> tok = build_tiny_tokenizer(); tok.chat_template = None
    >>> print(next_item_prompt(["<a_1><b_2>", "<a_3><b_4>"], tok))
    ### Instruction:
    A user interacted with these items, oldest first: <a_1><b_2>, <a_3><b_4>. Which item will the user interact with next?
    ### Response:
    <BLANKLINE>
    """
    if is_sid_only(tokenizer):
        return _history_text([sid + SID_SEP for sid in history_sids], max_history, "")
    history = _history_text(list(history_sids), max_history, ", ")
    return render_prompt(INSTRUCTIONS["seq_sid"].format(history=history), tokenizer)


def title_history_prompt(history_titles: Sequence[str], tokenizer, max_history: int = DEFAULT_MAX_HISTORY) -> str:
    """``seq_title``: the last ``max_history`` titles, quoted, oldest first."""
    history = _history_text([f'"{t}"' for t in history_titles], max_history, ", ")
    return render_prompt(INSTRUCTIONS["seq_title"].format(history=history), tokenizer)


def build_example(task: str, tokenizer, *, sid: str, title: str = "", history_sids: Sequence[str] = (),
                  history_titles: Sequence[str] = (), max_history: int = DEFAULT_MAX_HISTORY) -> dict[str, str]:
    """One ``{"prompt", "completion"}`` example. ``sid``/``title`` describe the target item.

    ``completion`` is the SID for every task except ``sid2title`` (the title).
    """
    if task == "seq_sid":
        return {"prompt": next_item_prompt(history_sids, tokenizer, max_history), "completion": sid}
    if task in TASKS and is_sid_only(tokenizer):
        raise UserError(f"task {task!r} needs words, but this tokenizer holds only SID tokens (a `scratch` model): "
                         "only seq_sid applies; set its other task weights to 0")
    if task == "seq_title":
        return {"prompt": title_history_prompt(history_titles, tokenizer, max_history), "completion": sid}
    if task == "title2sid":
        return {"prompt": render_prompt(INSTRUCTIONS["title2sid"].format(title=title), tokenizer), "completion": sid}
    if task == "sid2title":
        return {"prompt": render_prompt(INSTRUCTIONS["sid2title"].format(sid=sid), tokenizer), "completion": title}
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
