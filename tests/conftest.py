"""Shared fixtures: small hand-made datasets in the source formats, and the offline switch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# No test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_AMAZON18 = REPO.parent / "shared" / "datasets" / "amazon18"

MINI_ITEMS = {
    "1": {"title": "Red Stapler", "description": "['<b>Heavy</b> duty stapler', 'Holds 100 staples']",
          "brand": "Acme", "categories": ""},
    "2": {"title": "Staples 1000", "description": "", "brand": "Acme", "categories": ""},
    "3": {"title": "Blue Pen", "description": "['Smooth ink']", "brand": "Inky", "categories": ""},
    "4": {"title": "Notebook", "description": "[]", "brand": "", "categories": ""},
    "5": {"title": "Desk Lamp", "description": "['LED lamp']", "brand": "Bright", "categories": ""},
    "6": {"title": "Paper Clips", "description": "", "brand": "Acme", "categories": ""},
}
MINI_HEADER = "user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid"
# User A: sequence 1,2,3,4,5,6 -> valid rows target 5 (hist 1..4)... see tests for the hand-computed expectations.
MINI_VALID = [
    'A,"[]",x,"[1, 2, 3, 4]",5,"[]",s',
    'A,"[]",x,"[1, 2, 3, 4, 5]",6,"[]",s',
    'B,"[]",x,"[3, 1]",2,"[]",s',
]
MINI_TEST = [
    'B,"[]",x,"[3, 1, 2]",4,"[]",s',
    'C,"[]",x,"[6, 5, 4]",1,"[]",s',
]


def write_minionerec(folder: Path, name: str = "Mini", valid=None, test=None, items=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.item.json").write_text(json.dumps(MINI_ITEMS if items is None else items))
    for split, rows in (("valid", MINI_VALID if valid is None else valid), ("test", MINI_TEST if test is None else test)):
        (folder / f"{name}.{split}.csv").write_text("\n".join([MINI_HEADER, *rows]) + "\n")
    return folder


@pytest.fixture
def mini_minionerec(tmp_path) -> Path:
    """A 6-item, 3-user MiniOneRec domain named 'Mini'."""
    return write_minionerec(tmp_path / "Mini")
