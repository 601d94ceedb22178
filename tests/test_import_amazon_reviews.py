"""Raw Amazon Reviews importer (2018 + 2023): pipeline steps, exact rows, splits, errors, determinism."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from data_builders.amazon_reviews import import_amazon_reviews, k_core_filter, parse_time_bound
from data_builders.reading import clean_list, clean_text
from data_builders.dataset import DataError, load_rec_dataset, write_rec_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "amazon_raw"
R18, M18 = FIXTURES / "reviews_2018.jsonl", FIXTURES / "meta_2018.jsonl"
R23, M23 = FIXTURES / "reviews_2023.jsonl", FIXTURES / "meta_2023.jsonl"
JAN_2020, JAN_2021 = 1577836800, 1609459200


def build(reviews=R18, meta=M18, **kw):
    kw.setdefault("domain", "games")
    kw.setdefault("show_progress", False)
    return import_amazon_reviews(reviews, meta, **kw)


def rows_of(built, split: str) -> list[tuple]:
    return [(r.user_id, r.history, r.target, r.timestamp) for r in built.rows if r.split == split]


def gz_copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(gzip.compress(src.read_bytes(), mtime=0))
    return dst


def jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# --- 2018 ------------------------------------------------------------------------------------------------------


def test_2018_rows_match_hand_computed_expectation():
    built = build(k_core=2, max_history=2)
    # X (no meta) and Y (title "nan") dropped; u2's repeat of C dropped; k-core 2 drops E, then u4 (pass 2);
    # u3's A and D share a timestamp -> file order; histories cut to the last 2 items.
    assert rows_of(built, "train") == [("u1", ["A"], "B", 200)]
    assert rows_of(built, "valid") == [("u1", ["A", "B"], "C", 300), ("u2", ["B"], "C", 250), ("u3", ["A"], "D", 500)]
    assert rows_of(built, "test") == [
        ("u1", ["B", "C"], "D", 400),
        ("u2", ["B", "C"], "A", 350),
        ("u3", ["A", "D"], "B", 600),
    ]
    assert [i.item_id for i in built.items] == ["A", "B", "C", "D"]
    assert built.source["format"] == "amazon2018"


def test_2018_metadata_mapping():
    items = {i.item_id: i for i in build(k_core=2).items}
    a, b, c = items["A"], items["B"], items["C"]
    assert (a.title, a.brand, a.description) == ("Alpha Game", "Acme", "Fun. Very fun.")  # first record wins
    assert (a.categories, a.features, a.domain) == (["Video Games", "PC"], ["Fast"], "games")
    assert (b.description, b.brand, b.categories, b.features) == ("Plain description", "", [], ["One", "Two"])
    assert (c.description, c.brand, c.features) == ("", "", [])  # "nan" / "None" / absent are missing


def test_2018_skips_counted_after_round_trip(tmp_path: Path):
    write_rec_dataset(build(k_core=2, max_history=2), tmp_path / "ds")
    meta = load_rec_dataset(tmp_path / "ds").meta
    assert meta["skipped"] == {
        "duplicate_interactions": 1,
        "interactions_on_items_without_metadata_title": 2,
        "items_without_metadata": 0,
        "items_without_metadata_title": 2,
        "kcore_removed_interactions": 2,
        "kcore_removed_items": 1,
        "kcore_removed_users": 1,
        "meta_duplicate_records": 1,
        "reviews_outside_time_window": 0,
    }
    source = meta["source"]
    assert sorted(source["files"]) == ["meta_2018.jsonl", "reviews_2018.jsonl"]
    assert (source["k_core"], source["split"], source["max_history"]) == (2, "leave_one_out", 2)
    assert source["time_window"] == {"start": None, "end": None}


def test_2018_gzip_inputs_give_the_same_rows(tmp_path: Path):
    plain = build(k_core=2)
    packed = build(gz_copy(R18, tmp_path / "r.json.gz"), gz_copy(M18, tmp_path / "m.json.gz"), k_core=2)
    assert packed.rows == plain.rows and packed.items == plain.items


def test_2018_time_window_is_half_open():
    built = build(k_core=1, start=200, end="500")
    # kept: timestamps 200..450; u1 -> B C D, u2 -> C A (C's repeat at 450 deduped) -> too short, skipped
    assert rows_of(built, "valid") == [("u1", ["B"], "C", 300)]
    assert rows_of(built, "test") == [("u1", ["B", "C"], "D", 400)]
    assert built.skipped["reviews_outside_time_window"] == 9
    assert built.source["time_window"] == {"start": 200, "end": 500}


def test_2018_without_metadata_and_without_dedupe():
    built = build(meta=None, require_metadata=False, dedupe=False, k_core=1)
    assert [i.item_id for i in built.items] == ["A", "B", "C", "D", "E", "X", "Y"]
    assert built.skipped["items_without_metadata"] == 7
    assert "duplicate_interactions" not in built.skipped
    # without dedupe u2 keeps both C's: B(150) C(250) A(350) C(450)
    assert ("u2", ["B", "C", "A"], "C", 450) in rows_of(built, "test")
    assert built.skipped["users_with_fewer_than_3_interactions"] == 2  # u4 (2 items), u5 (1 item)


# --- k-core ----------------------------------------------------------------------------------------------------


def test_k_core_iterates_until_stable():
    # k=2: pass 1 drops user d; that leaves i3 with one user -> pass 2 drops (c, i3); c is then alone with i2 ->
    # pass 3 drops (c, i2). A single pass would keep c.
    inters = [("a", "i1", 1, 1), ("a", "i2", 2, 2), ("b", "i1", 3, 3), ("b", "i2", 4, 4),
              ("c", "i2", 5, 5), ("c", "i3", 6, 6), ("d", "i3", 7, 7)]
    skipped: Counter = Counter()
    kept = k_core_filter(inters, 2, skipped)
    assert kept == inters[:4]
    removed = (skipped["kcore_removed_users"], skipped["kcore_removed_items"], skipped["kcore_removed_interactions"])
    assert removed == (2, 1, 3)


def test_k_core_that_removes_everything_is_a_clear_error():
    with pytest.raises(DataError, match=r"reviews_2018\.jsonl: k-core 5 removed every user; lower k_core"):
        build(k_core=5)


# --- 2023 ------------------------------------------------------------------------------------------------------


def test_2023_ms_to_seconds_dedupe_earliest_and_parent_asin():
    built = build(R23, M23, domain="beauty", k_core=1)
    assert built.source["format"] == "amazon2023"
    # U3 reviewed P1 in 2021 (line 7) and 2019 (line 10): the earliest one is kept, so P1 opens U3's history.
    assert rows_of(built, "test") == [
        ("U1", ["P1", "P2"], "P3", 1583020800),  # 1583020800789 ms
        ("U2", ["P2", "P3"], "P1", 1585699200),
        ("U3", ["P1", "P3"], "P2", 1590969600),
    ]
    assert rows_of(built, "valid")[0] == ("U1", ["P1"], "P2", 1580515200)  # 1580515200456 ms
    assert built.skipped["duplicate_interactions"] == 1
    assert [i.item_id for i in built.items] == ["P1", "P2", "P3"]  # parent_asin, not asin


def test_2023_metadata_mapping():
    items = {i.item_id: i for i in build(R23, M23, k_core=1).items}
    p1, p2, p3 = items["P1"], items["P2"], items["P3"]
    assert (p1.title, p1.brand, p1.description) == ("Pink Lipstick", "GlowCo", "A pink lipstick. Vegan.")
    assert (p1.categories, p1.features) == (["Beauty", "Makeup", "Lips"], ["Long lasting", "Matte"])
    assert (p2.brand, p2.categories, p2.features, p2.description) == ("", [], [], "")  # store null
    assert p3.brand == ""  # store "None"


def test_2023_temporal_split_with_iso_window(tmp_path: Path):
    reviews = gz_copy(R23, tmp_path / "All_Beauty.jsonl.gz")
    built = build(
        reviews, M23, k_core=1, start="2020-01-01", end="2021-01-01", split="temporal", ratios=(0.6, 0.2, 0.2)
    )
    # 2019 review and the review at exactly 2021-01-01 (end is exclusive) fall outside.
    assert built.skipped["reviews_outside_time_window"] == 2
    assert built.source["time_window"] == {"start": JAN_2020, "end": JAN_2021}
    assert built.source["ratios"] == [0.6, 0.2, 0.2]
    assert rows_of(built, "train") == [
        ("U1", ["P1"], "P2", 1580515200),
        ("U2", ["P2"], "P3", 1580601600),
        ("U1", ["P1", "P2"], "P3", 1583020800),
    ]
    assert rows_of(built, "valid") == [("U2", ["P2", "P3"], "P1", 1585699200)]
    assert rows_of(built, "test") == [("U3", ["P3"], "P2", 1590969600)]
    by_split = {s: [r.timestamp for r in built.rows if r.split == s] for s in ("train", "valid", "test")}
    assert max(by_split["train"]) <= min(by_split["valid"]) <= max(by_split["valid"]) <= min(by_split["test"])


def test_auto_detects_version_and_forced_version_mismatch_is_named():
    assert build(R23, M23, version="auto", k_core=1).source["format"] == "amazon2023"
    with pytest.raises(DataError, match=r"reviews_2018\.jsonl, line 1: missing required field 'user_id'"):
        build(R18, M18, version="2023")


def test_time_bounds_and_field_cleaning():
    assert parse_time_bound("2020-01-01", "start") == JAN_2020
    assert parse_time_bound("1577836800", "start") == JAN_2020
    assert parse_time_bound(None, "end") is None
    with pytest.raises(ValueError, match="start='last week'"):
        parse_time_bound("last week", "start")
    assert clean_text("  None ", "f", 1, "brand") == ""
    assert clean_text("[Update] new version [2020]", "f", 1, "title") == "[Update] new version [2020]"
    assert clean_list([["Books", "Fiction"], ["Books"]], "f", 1, "categories") == ["Books", "Fiction", "Books"]


# --- determinism -----------------------------------------------------------------------------------------------


def test_building_twice_gives_byte_identical_parquet(tmp_path: Path):
    for out in ("a", "b"):
        write_rec_dataset(build(R23, M23, k_core=1), tmp_path / out)
    names = sorted(p.name for p in (tmp_path / "a").glob("*.parquet"))
    assert names == ["items.parquet", "test.parquet", "train.parquet", "valid.parquet"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# --- malformed input: DataError naming file and line -----------------------------------------------------------

GOOD_18 = {"reviewerID": "u1", "asin": "A", "unixReviewTime": 100}


def test_malformed_json_line(tmp_path: Path):
    reviews = jsonl(tmp_path / "bad.jsonl", [GOOD_18, '{"reviewerID": "u1", "asin": '])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: malformed JSON"):
        build(reviews)


def test_non_utf8_bytes_in_gz(tmp_path: Path):
    payload = (json.dumps(GOOD_18) + "\n").encode() * 2 + b'{"reviewerID": "caf\xe9", "asin": "A"}\n'
    reviews = tmp_path / "bad.jsonl.gz"
    reviews.write_bytes(gzip.compress(payload, mtime=0))
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz, line 3: not valid UTF-8"):
        build(reviews)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"reviewerID": "u1", "unixReviewTime": 5}, r"line 2: missing required field 'asin'"),
        ({"reviewerID": "u1", "asin": "A", "unixReviewTime": None},
         r"line 2: missing required field 'unixReviewTime'"),
        ({"reviewerID": "u1", "asin": "A", "unixReviewTime": "yesterday"},
         r"line 2: field 'unixReviewTime' should be a unix timestamp"),
        ({"reviewerID": ["u1"], "asin": "A", "unixReviewTime": 5},
         r"line 2: field 'reviewerID' should be a non-empty string id"),
        ([1, 2], r"line 2: expected a JSON object, got list"),
    ],
)
def test_bad_review_records(tmp_path: Path, record, message: str):
    reviews = jsonl(tmp_path / "bad.jsonl", [GOOD_18, json.dumps(record)])
    with pytest.raises(DataError, match=r"bad\.jsonl, " + message):
        build(reviews)


def test_missing_timestamp_2023(tmp_path: Path):
    records = [{"user_id": "U1", "parent_asin": "P1", "timestamp": 1}, {"user_id": "U1", "parent_asin": "P2"}]
    reviews = jsonl(tmp_path / "r23.jsonl", records)
    with pytest.raises(DataError, match=r"r23\.jsonl, line 2: missing required field 'timestamp'"):
        build(reviews, M23)


def test_bad_meta_records(tmp_path: Path):
    meta = jsonl(tmp_path / "meta.jsonl", [{"asin": "A", "title": "ok"}, {"title": "no id"}])
    with pytest.raises(DataError, match=r"meta\.jsonl, line 2: missing required field 'asin'"):
        build(meta=meta)
    meta = jsonl(tmp_path / "meta.jsonl", [{"asin": "B", "title": "ok"}, {"asin": "A", "title": {"en": "x"}}])
    with pytest.raises(DataError, match=r"meta\.jsonl, line 2: field 'title' should be text"):
        build(meta=meta)
    meta = jsonl(tmp_path / "meta.jsonl", [{"asin": "A", "title": "ok", "category": "['Games', PC]"}])
    with pytest.raises(DataError, match=r"meta\.jsonl, line 1: column 'category' is not a Python list literal"):
        build(meta=meta)


def test_empty_after_filtering_errors(tmp_path: Path):
    unrelated = jsonl(tmp_path / "meta.jsonl", [{"asin": "QQQ", "title": "Other shop"}])
    with pytest.raises(DataError, match=r"reviews_2018\.jsonl: no reviewed item has a metadata title in .*meta"):
        build(meta=unrelated)
    with pytest.raises(DataError, match=r"reviews_2018\.jsonl: no reviews inside the time window"):
        build(start="2030-01-01")
    empty = jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match=r"empty\.jsonl: no reviews"):
        build(empty)
    odd = jsonl(tmp_path / "odd.jsonl", [{"who": "u1", "what": "A"}])
    with pytest.raises(DataError, match=r"odd\.jsonl, line 1: cannot tell the Amazon Reviews version"):
        build(odd)
