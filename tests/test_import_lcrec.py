"""LC-Rec importer: exact rows, metadata normalisation, SID index, gz input, errors, determinism."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from data_builders.dataset import DataError, load_rec_dataset, write_rec_dataset
from data_builders.lcrec import import_lcrec, sorted_item_ids

FIXTURES = Path(__file__).parent / "fixtures" / "lcrec"


def rows_of(built, split: str) -> list[tuple]:
    return [(r.user_id, r.history, r.target, r.timestamp) for r in built.rows if r.split == split]


@pytest.fixture
def toy_dir(tmp_path: Path) -> Path:
    """A private copy of the fixture directory that a test may modify."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "toy"))


def test_rows_match_hand_computed_leave_one_out():
    built = import_lcrec(FIXTURES, "Toy", max_history=3)
    # user "2" has 2 items -> skipped; histories are truncated to the last 3 items; no timestamps -> -1.
    assert rows_of(built, "train") == [
        ("0", ["1"], "2", -1),
        ("0", ["1", "2"], "3", -1),
        ("3", ["4"], "5", -1),
        ("3", ["4", "5"], "1", -1),
        ("3", ["4", "5", "1"], "2", -1),
        ("3", ["5", "1", "2"], "3", -1),
    ]
    assert rows_of(built, "valid") == [
        ("0", ["1", "2", "3"], "4", -1),
        ("1", ["2"], "3", -1),
        ("3", ["1", "2", "3"], "10", -1),
    ]
    assert rows_of(built, "test") == [
        ("0", ["2", "3", "4"], "5", -1),
        ("1", ["2", "3"], "10", -1),
        ("3", ["2", "3", "10"], "2", -1),
    ]
    assert {r.domain for r in built.rows} == {"Toy"}  # domain defaults to the name
    assert built.skipped["users_with_fewer_than_3_interactions"] == 1


def test_items_union_sorted_by_int_and_normalised():
    built = import_lcrec(FIXTURES, "Toy", domain="music")
    items = {i.item_id: i for i in built.items}
    # every id from item.json ("7" is never bought) and from inter.json ("10" has no metadata), int order
    assert [i.item_id for i in built.items] == ["1", "2", "3", "4", "5", "7", "10"]
    assert items["1"].description == "A guitar. Six strings."
    assert items["1"].categories == ["Musical Instruments", "Guitars"]
    assert items["2"].description == "Nickel strings."  # stringified list, "nan" dropped
    assert items["2"].brand == ""  # "nan" is missing
    assert items["2"].categories == ["Musical Instruments", "Strings"]
    assert items["3"].categories == ["Musical Instruments", "Tuners"]
    assert items["4"].categories == ["Clothing, Shoes & Jewelry", "Accessories"]  # ", " is inside a name
    assert (items["5"].description, items["5"].brand, items["5"].categories) == ("", "", [])
    assert items["10"].title == "" and items["10"].domain == "music"
    assert built.skipped["items_without_metadata"] == 1


def test_sorted_item_ids_falls_back_to_lexicographic():
    assert sorted_item_ids({"10", "9", "100"}) == ["9", "10", "100"]
    assert sorted_item_ids({"b10", "b9", "10"}) == ["10", "b10", "b9"]


def test_round_trip_keeps_skips_source_and_index(tmp_path: Path):
    built = import_lcrec(FIXTURES, "Toy", max_history=3)
    meta = write_rec_dataset(built, tmp_path / "ds")
    loaded = load_rec_dataset(tmp_path / "ds")
    assert loaded.meta["skipped"] == {"items_without_metadata": 1, "users_with_fewer_than_3_interactions": 1}
    source = loaded.meta["source"]
    assert source["format"] == "lcrec" and source["split"] == "leave_one_out" and source["max_history"] == 3
    assert sorted(source["files"]) == ["Toy.index.json", "Toy.inter.json", "Toy.item.json"]
    assert all(len(h) == 64 for h in source["files"].values())
    assert loaded.meta["totals"] == {"items": 7, "train": 6, "valid": 3, "test": 3}
    assert loaded.splits["test"]["target"] == ["5", "10", "2"]
    index = json.loads((tmp_path / "ds" / "sids.index.json").read_text())
    assert index == json.loads((FIXTURES / "Toy.index.json").read_text())
    assert "sids.index.json" in meta["content_hashes"]


def test_gzipped_inputs_give_the_same_dataset(toy_dir: Path):
    plain = import_lcrec(toy_dir, "Toy")
    for kind in ("inter", "item", "index"):
        src = toy_dir / f"Toy.{kind}.json"
        (toy_dir / f"Toy.{kind}.json.gz").write_bytes(gzip.compress(src.read_bytes(), mtime=0))
        src.unlink()
    packed = import_lcrec(toy_dir, "Toy")
    assert packed.rows == plain.rows and packed.items == plain.items
    assert packed.extra_files == plain.extra_files
    assert sorted(packed.source["files"]) == ["Toy.index.json.gz", "Toy.inter.json.gz", "Toy.item.json.gz"]


def test_optional_files_may_be_absent(toy_dir: Path):
    (toy_dir / "Toy.item.json").unlink()
    (toy_dir / "Toy.index.json").unlink()
    built = import_lcrec(toy_dir, "Toy")
    assert built.extra_files == {}
    assert built.skipped["items_without_metadata"] == 6  # ids 1,2,3,4,5,10 all lack metadata
    assert all(i.title == "" for i in built.items)


def test_determinism_byte_identical_parquet(tmp_path: Path):
    for out in ("a", "b"):
        write_rec_dataset(import_lcrec(FIXTURES, "Toy"), tmp_path / out)
    names = sorted(p.name for p in (tmp_path / "a").iterdir() if p.name != "meta.json")
    assert names == ["items.parquet", "sids.index.json", "test.parquet", "train.parquet", "valid.parquet"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# --- errors: each names the file and the line / key ---------------------------------------------------------


def _write(path: Path, text: str | bytes) -> None:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def test_malformed_json_names_file_and_line(toy_dir: Path):
    _write(toy_dir / "Toy.inter.json", '{\n  "0": [1, 2, 3],\n  "1": [1, 2 3]\n}\n')
    with pytest.raises(DataError, match=r"Toy\.inter\.json, line 3: malformed JSON"):
        import_lcrec(toy_dir, "Toy")


def test_non_utf8_in_gz_names_file_and_line(toy_dir: Path):
    (toy_dir / "Toy.item.json").unlink()
    payload = b'{\n"1": {"title": "ok"},\n"2": {"title": "caf\xe9"}\n}\n'
    _write(toy_dir / "Toy.item.json.gz", gzip.compress(payload, mtime=0))
    with pytest.raises(DataError, match=r"Toy\.item\.json\.gz, line 3: not valid UTF-8"):
        import_lcrec(toy_dir, "Toy")


def test_inter_value_not_a_list(toy_dir: Path):
    _write(toy_dir / "Toy.inter.json", '{"0": [1, 2, 3], "u9": "1 2 3"}')
    with pytest.raises(DataError, match=r"Toy\.inter\.json, user 'u9': expected a list of item ids, got str"):
        import_lcrec(toy_dir, "Toy")


def test_inter_item_id_of_wrong_type(toy_dir: Path):
    _write(toy_dir / "Toy.inter.json", '{"0": [1, 2, {"id": 3}]}')
    with pytest.raises(DataError, match=r"Toy\.inter\.json, user '0': item ids should be"):
        import_lcrec(toy_dir, "Toy")


def test_item_metadata_wrong_types(toy_dir: Path):
    _write(toy_dir / "Toy.item.json", '{"1": ["Guitar"]}')
    with pytest.raises(DataError, match=r"Toy\.item\.json, item '1': expected an object of item fields"):
        import_lcrec(toy_dir, "Toy")
    _write(toy_dir / "Toy.item.json", '{"1": {"title": {"en": "Guitar"}}}')
    with pytest.raises(DataError, match=r"Toy\.item\.json, item '1': field 'title' should be text"):
        import_lcrec(toy_dir, "Toy")


def test_index_unknown_key(toy_dir: Path):
    _write(toy_dir / "Toy.index.json", '{"1": ["<a_1>"], "999": ["<a_2>"]}')
    with pytest.raises(DataError, match=r"Toy\.index\.json, key '999': item is not in the catalogue"):
        import_lcrec(toy_dir, "Toy")


@pytest.mark.parametrize("value", ['[]', '"<a_1><b_2>"', '["<a_1>", 7]', '["<a_1>", ""]'])
def test_index_bad_value(toy_dir: Path, value: str):
    _write(toy_dir / "Toy.index.json", '{"1": ["<a_1>"], "2": %s}' % value)
    with pytest.raises(DataError, match=r"Toy\.index\.json, key '2': expected a non-empty list of SID token"):
        import_lcrec(toy_dir, "Toy")


def test_missing_or_ambiguous_inter_file(toy_dir: Path):
    with pytest.raises(DataError, match=r"Nope\.inter\.json: file not found \(nor its \.gz\)"):
        import_lcrec(toy_dir, "Nope")
    _write(toy_dir / "Toy.inter.json.gz", gzip.compress(b"{}", mtime=0))
    with pytest.raises(DataError, match=r"both Toy\.inter\.json and Toy\.inter\.json\.gz exist"):
        import_lcrec(toy_dir, "Toy")


def test_no_user_long_enough(toy_dir: Path):
    _write(toy_dir / "Toy.inter.json", '{"0": [1, 2], "1": [3]}')
    with pytest.raises(DataError, match=r"Toy\.inter\.json: every user has fewer than 3 items"):
        import_lcrec(toy_dir, "Toy")
    _write(toy_dir / "Toy.inter.json", '[[1, 2, 3]]')
    with pytest.raises(DataError, match=r"Toy\.inter\.json: expected a JSON object"):
        import_lcrec(toy_dir, "Toy")
