"""MiniOneRec CSV importer: exact valid/test rows, leak-free training reconstruction, clear errors."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json

import pytest

from conftest import SHARED_AMAZON18, write_minionerec
from data_builders.dataset import DataError
from data_builders.embedded import DOMAINS, EMBEDDED_DIR
from data_builders.minionerec import import_minionerec
from data_builders.reading import clean_list, clean_text


def rows_of(built, split):
    return [(r.user_id, r.history, r.target) for r in built.rows if r.split == split]


def test_valid_and_test_rows_kept_exactly(mini_minionerec):
    built = import_minionerec(mini_minionerec, "Mini")
    assert rows_of(built, "valid") == [("A", ["1", "2", "3", "4"], "5"), ("A", ["1", "2", "3", "4", "5"], "6"),
                                       ("B", ["3", "1"], "2")]
    assert rows_of(built, "test") == [("B", ["3", "1", "2"], "4"), ("C", ["6", "5", "4"], "1")]
    assert [r.source_row for r in built.rows if r.split == "test"] == [0, 1]


def test_training_windows_rebuilt_from_earliest_eval_row(mini_minionerec):
    built = import_minionerec(mini_minionerec, "Mini", max_history=2)
    # A's earliest row is valid [1,2,3,4]->5; B's is valid [3,1]->2; C has only a test row [6,5,4]->1.
    assert rows_of(built, "train") == [
        ("A", ["1"], "2"), ("A", ["1", "2"], "3"), ("A", ["2", "3"], "4"),
        ("B", ["3"], "1"),
        ("C", ["6"], "5"), ("C", ["6", "5"], "4"),
    ]


def test_items_parsed_with_literal_eval_and_domain(mini_minionerec):
    built = import_minionerec(mini_minionerec, "Mini", domain="Office")
    item = built.items[0]
    assert (item.item_id, item.domain, item.brand) == ("1", "Office", "Acme")
    assert item.description == "<b>Heavy</b> duty stapler Holds 100 staples"  # HTML is stripped at serialisation
    assert built.items[3].description == ""  # "[]" is missing
    assert {r.domain for r in built.rows} == {"Office"}


def test_field_cleaning():
    assert clean_text("['a', 'b']", "f", 1, "d") == "a b"
    assert clean_text("nan", "f", 1, "d") == "" and clean_text(None, "f", 1, "d") == ""
    assert clean_text("[not a list", "f", 1, "d") == "[not a list"
    assert clean_list("['Tools', 'Staplers']", "f", 1, "c") == ["Tools", "Staplers"]
    assert clean_list(["a", "", "[]"], "f", 1, "c") == ["a"]
    with pytest.raises(DataError, match=r"f, item '7': field 'title' should be text"):
        clean_text({"x": 1}, "f", "item '7'", "title")


@pytest.mark.parametrize(
    "valid_rows, match",
    [
        (['A,"[]",x,"[1, 2]",9,"[]",s'], r"Mini.valid.csv, line 2: unknown item id '9'"),
        (['A,"[]",x,"[]",2,"[]",s'], r"Mini.valid.csv, line 2: empty history"),
        (['A,"[]",x,"[1, 2]",3'], r"Mini.valid.csv, line 2: expected 7 fields, found 5"),
        (['A,"[]",x,"[1, 2",3,"[]",s'], r"line 2: column 'history_item_id' is not a Python list literal"),
        (['A,"[]",x,"__import__(\'os\').getcwd()",3,"[]",s'], r"line 2: column 'history_item_id' is not a Python"),
        (['A,"[]",x,"7",3,"[]",s'], r"line 2: column 'history_item_id' should be a list"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, valid_rows, match):
    folder = write_minionerec(tmp_path / "Mini", valid=valid_rows)
    with pytest.raises(DataError, match=match):
        import_minionerec(folder, "Mini")


def test_non_utf8_missing_column_duplicate_ids_missing_title(tmp_path):
    folder = write_minionerec(tmp_path / "Mini")
    (folder / "Mini.test.csv").write_bytes(b"user_id,history_item_id,item_id\nA,\"[1]\",2\nB,\"[1]\",\xff\n")
    with pytest.raises(DataError, match=r"Mini.test.csv, line 3: not valid UTF-8"):
        import_minionerec(folder, "Mini")
    (folder / "Mini.test.csv").write_text("user_id,history_item_id\nA,\"[1]\"\n")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['item_id'\]"):
        import_minionerec(folder, "Mini")
    write_minionerec(folder)
    (folder / "Mini.item.json").write_text('{"1": {"title": "a"}, "1": {"title": "b"}}')
    with pytest.raises(DataError, match=r"Mini.item.json, key '1': duplicate key"):
        import_minionerec(folder, "Mini")
    (folder / "Mini.item.json").write_text('{"1": {"brand": "a"}}')
    with pytest.raises(DataError, match=r"item '1': missing required field 'title'"):
        import_minionerec(folder, "Mini")
    (folder / "Mini.item.json").write_text('{"1": {"title": "a"},')
    with pytest.raises(DataError, match=r"Mini.item.json, line 1: malformed JSON"):
        import_minionerec(folder, "Mini")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"Nope.item.json: file not found"):
        import_minionerec(tmp_path, "Nope")


# --- the embedded Amazon 2018 data -----------------------------------------------------------------------------

PUBLISHED = {"Industrial_and_Scientific": {"valid": 4532, "test": 4533},
             "Office_Products": {"valid": 4866, "test": 4866}}


def csv_rows(raw: bytes):
    csv.field_size_limit(1 << 30)
    return list(csv.DictReader(raw.decode("utf-8").splitlines()))


@pytest.mark.parametrize("domain", DOMAINS)
def test_embedded_files_are_the_release_files(domain):
    record = json.loads((EMBEDDED_DIR / "SOURCE.json").read_text())
    for suffix in (".item.json", ".valid.csv", ".test.csv", ".minionerec-sid.index.json"):
        data = gzip.decompress((EMBEDDED_DIR / domain / f"{domain}{suffix}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == record["files"][f"{domain}/{domain}{suffix}"]
        original = SHARED_AMAZON18 / domain / f"{domain}{suffix}"
        if original.exists():  # CI has ../shared beside the clone
            assert data == original.read_bytes()


@pytest.mark.parametrize("domain", DOMAINS)
def test_embedded_published_rows_preserved_exactly(domain):
    built = import_minionerec(EMBEDDED_DIR / domain, domain)
    for split, n in PUBLISHED[domain].items():
        source = csv_rows(gzip.decompress((EMBEDDED_DIR / domain / f"{domain}.{split}.csv.gz").read_bytes()))
        ours = [r for r in built.rows if r.split == split]
        assert len(ours) == len(source) == n
        for k in (0, n - 1):  # first and last rows, parsed independently of the importer
            expected_hist = [s.strip() for s in source[k]["history_item_id"].strip("[]").split(",")]
            assert (ours[k].user_id, ours[k].history, ours[k].target) == (
                source[k]["user_id"], expected_hist, source[k]["item_id"])
        assert [r.source_row for r in ours] == list(range(n))


@pytest.mark.parametrize("domain, expected_train", [("Industrial_and_Scientific", 10393), ("Office_Products", 9484)])
def test_embedded_training_reconstruction_has_no_leak(domain, expected_train):
    built = import_minionerec(EMBEDDED_DIR / domain, domain)
    train = [r for r in built.rows if r.split == "train"]
    assert len(train) == expected_train  # README: about 10.4k (Industrial) and 9.5k (Office)
    earliest, later_targets = {}, {}
    for r in built.rows:
        if r.split != "train":
            if r.user_id in earliest:
                later_targets.setdefault(r.user_id, set()).add((tuple(r.history), r.target))
            earliest.setdefault(r.user_id, r)
    for r in train:
        cut = earliest[r.user_id]
        # every training target lies strictly inside the history of the user's first evaluation row ...
        windows = {(tuple(cut.history[max(0, j - 10):j]), cut.history[j]) for j in range(1, len(cut.history))}
        assert (tuple(r.history), r.target) in windows
        # ... so it precedes the cut, and no training row repeats one of the user's evaluation windows
        assert (tuple(r.history), r.target) not in later_targets.get(r.user_id, set())
        assert (r.history, r.target) != (cut.history, cut.target)
