"""Item text serialisation (Mini_XPERT Algorithm 1): priority, skipping, HTML, SmartTruncate."""

from __future__ import annotations

from data_builders.serialize import clean_value, serialize_item, strip_html, token_counter
from sft.models import build_tiny_tokenizer

ITEM = {
    "title": "Big Stapler X", "brand": "Acme", "categories": ["Office", "Staplers"],
    "features": ["100 sheets", "metal body"], "description": "A very long description of the stapler",
}


def test_priority_order_and_format():
    assert serialize_item(ITEM) == (
        "Title: Big Stapler X; Brand: Acme; Category: Office, Staplers; Features: 100 sheets, metal body; "
        "Description: A very long description of the stapler;"
    )


def test_missing_values_are_skipped():
    item = {"title": "Pen", "brand": None, "categories": "[]", "features": [], "description": float("nan")}
    assert serialize_item(item) == "Title: Pen;"
    assert serialize_item({"title": "Pen", "brand": "nan", "description": "  "}) == "Title: Pen;"


def test_html_is_stripped():
    assert strip_html("<p>Hot &amp; <b>cold</b></p><!-- .css {x:1} --><style>p{}</style>") == "Hot & cold"
    assert clean_value(["<i>a</i>", "", "b"]) == "a, b"


def test_truncation_drops_lowest_priority_first_and_keeps_title_brand():
    full = serialize_item(ITEM)
    cut = serialize_item(ITEM, max_length=len(full) - 10)
    assert cut.startswith("Title: Big Stapler X; Brand: Acme; Category: Office, Staplers; Features: 100 sheets")
    assert cut.endswith(";") and len(cut) <= len(full) - 10
    assert "Description: A very long" in cut  # description cut word by word, not dropped wholesale
    no_desc = serialize_item(ITEM, max_length=95)
    assert "Description" not in no_desc and "Features: 100 sheets" in no_desc
    assert serialize_item(ITEM, max_length=5) == "Title: Big Stapler X; Brand: Acme;"  # protected even over budget


def test_token_budget():
    tok = build_tiny_tokenizer()  # byte-level: one token per byte
    count = token_counter(tok)
    text = serialize_item(ITEM, max_length=80, count=count)
    assert count(text) <= 80 and text.startswith("Title: Big Stapler X; Brand: Acme;")
