"""Canonical dataset: validation, atomic writes, determinism, merge, load round trip."""

from __future__ import annotations

import pytest

from data_builders.dataset import BuiltDataset, DataError, Item, Row, load_rec_dataset, write_rec_dataset
from data_builders.merge import merge_datasets
from data_builders.minionerec import import_minionerec


def tiny_built(domain="D", ids=("a", "b", "c")) -> BuiltDataset:
    items = [Item(i, domain, title=f"item {i}") for i in ids]
    rows = [Row("u", domain, [ids[0]], ids[1], "train"), Row("u", domain, [ids[0], ids[1]], ids[2], "test")]
    return BuiltDataset(items, rows, source={"format": "test"})


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b.items.append(Item("a", "D")), r"item #3: duplicate item_id 'a' \(first at #0\)"),
        (lambda b: b.rows.append(Row("v", "D", ["a"], "zz", "test")), r"row #2 .*unknown item id 'zz'"),
        (lambda b: b.rows.append(Row("v", "D", [], "a", "test")), r"row #2 .*empty history"),
        (lambda b: b.rows.append(Row("v", "D", ["a"], "b", "dev")), r"unknown split 'dev'"),
    ],
)
def test_invalid_datasets_are_rejected_and_nothing_is_written(tmp_path, mutate, match):
    built = tiny_built()
    mutate(built)
    with pytest.raises(DataError, match=match):
        write_rec_dataset(built, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no temp directory left behind


def test_failed_rewrite_keeps_previous_artifact(tmp_path):
    write_rec_dataset(tiny_built(), tmp_path / "out")
    before = (tmp_path / "out" / "meta.json").read_bytes()
    bad = tiny_built()
    bad.rows.append(Row("v", "D", [], "a", "test"))
    with pytest.raises(DataError):
        write_rec_dataset(bad, tmp_path / "out")
    assert (tmp_path / "out" / "meta.json").read_bytes() == before


def test_round_trip_and_counts(tmp_path):
    meta = write_rec_dataset(tiny_built(), tmp_path / "out")
    ds = load_rec_dataset(tmp_path / "out")
    assert ds.item_ids == ["a", "b", "c"] and ds.item_index() == {"a": 0, "b": 1, "c": 2}
    assert ds.splits["test"][0]["history"] == ["a", "b"] and len(ds.splits["valid"]) == 0
    assert meta["domains"]["D"]["rows"] == {"train": 1, "valid": 0, "test": 1}
    assert ds.dataset_hash == meta["dataset_hash"]


def test_same_input_gives_byte_identical_artifacts(tmp_path, mini_minionerec):
    for out in ("one", "two"):
        write_rec_dataset(import_minionerec(mini_minionerec, "Mini"), tmp_path / out)
    for name in ("items.parquet", "train.parquet", "valid.parquet", "test.parquet", "meta.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_merge_namespaces_ids_and_keeps_domains(tmp_path):
    merged = merge_datasets([tiny_built("Tools"), tiny_built("Office")])
    assert [i.item_id for i in merged.items][:2] == ["Tools:a", "Tools:b"]
    assert merged.rows[-1].history == ["Office:a", "Office:b"] and merged.rows[-1].domain == "Office"
    meta = write_rec_dataset(merged, tmp_path / "m")
    assert set(meta["domains"]) == {"Tools", "Office"} and meta["domains"]["Office"]["items"] == 3
    with pytest.raises(DataError, match="duplicate domains"):
        merge_datasets([tiny_built("X"), tiny_built("X")])


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="not a dataset directory"):
        load_rec_dataset(tmp_path)
    (tmp_path / "meta.json").write_text('{"format": "other/9"}')
    with pytest.raises(DataError, match="unsupported format 'other/9'"):
        load_rec_dataset(tmp_path)


def test_rewriting_identical_content_keeps_the_old_directory(tmp_path):
    import os

    write_rec_dataset(tiny_built(), tmp_path / "out")
    os.utime(tmp_path / "out" / "meta.json", (1, 1))  # an old mtime we can recognise
    write_rec_dataset(tiny_built(), tmp_path / "out")
    assert (tmp_path / "out" / "meta.json").stat().st_mtime == 1  # untouched: `make` sees nothing new
    changed = tiny_built()
    changed.items[0].title = "renamed"
    write_rec_dataset(changed, tmp_path / "out")
    assert (tmp_path / "out" / "meta.json").stat().st_mtime != 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or backup directories left
