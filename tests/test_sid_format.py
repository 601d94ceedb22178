"""SID token strings, parsing and MiniOneRec / LC-Rec index.json interop (tokenization.sid_format)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokenization.artifact import SidArtifact, export_index_json
from tokenization.collisions import collision_stats, resolve_collisions
from tokenization.sid_format import (
    all_sid_tokens,
    parse_sid_string,
    parse_sid_token,
    read_index_json,
    sid_string,
    sid_token,
    sid_tokens,
    split_sid_string,
    write_index_json,
)

REAL_INDEX = (Path(__file__).resolve().parents[2] / "shared" / "datasets" / "amazon18" / "Industrial_and_Scientific"
              / "Industrial_and_Scientific.minionerec-sid.index.json")

# A MiniOneRec-style index with one collision: items "7" and "8" share <a_210><b_231><c_0> (as in the real file).
MINI_INDEX = {
    "0": ["<a_236>", "<b_231>", "<c_226>"],
    "1": ["<a_42>", "<b_80>", "<c_160>"],
    "7": ["<a_210>", "<b_231>", "<c_0>"],
    "8": ["<a_210>", "<b_231>", "<c_0>"],
    "9": ["<a_108>", "<b_140>", "<c_213>"],
}


def test_token_strings_by_hand():
    assert sid_token(0, 12) == "<a_12>"
    assert sid_token(3, 0) == "<d_0>"
    assert sid_tokens((12, 5, 200)) == ["<a_12>", "<b_5>", "<c_200>"]
    assert sid_string((12, 5, 200, 0)) == "<a_12><b_5><c_200><d_0>"
    assert parse_sid_token("<b_5>") == (1, 5)
    assert split_sid_string(" <a_1><b_2><c_3>\n") == ["<a_1>", "<b_2>", "<c_3>"]
    assert parse_sid_string("<a_12><b_5><c_200><d_0>") == (12, 5, 200, 0)
    assert all_sid_tokens([2, 3]) == ["<a_0>", "<a_1>", "<b_0>", "<b_1>", "<b_2>"]


@pytest.mark.parametrize("bad", ["<a_1> <b_2>", "<b_1><a_2>", "<a_1><c_2>", "a_1", "<A_1>", "<a_-1>", "<a_1>x", ""])
def test_malformed_sid_strings_raise(bad):
    with pytest.raises(ValueError):
        parse_sid_string(bad)


def test_string_round_trip_property():
    rng = np.random.default_rng(0)
    for _ in range(200):
        codes = tuple(int(c) for c in rng.integers(0, 1000, size=rng.integers(1, 8)))
        assert parse_sid_string(sid_string(codes)) == codes


def test_index_json_round_trip(tmp_path):
    src = tmp_path / "peer.index.json"
    src.write_text(json.dumps(MINI_INDEX))
    ids, codes = read_index_json(src, id_prefix="Industrial_and_Scientific:")
    assert ids[2] == "Industrial_and_Scientific:7"
    assert codes.tolist()[0] == [236, 231, 226]
    out = tmp_path / "out.index.json"
    write_index_json(out, ids, codes, strip_prefix="Industrial_and_Scientific:")
    assert json.loads(out.read_text()) == MINI_INDEX


def test_index_json_collisions_resolved_then_exported(tmp_path):
    src = tmp_path / "peer.index.json"
    src.write_text(json.dumps(MINI_INDEX))
    ids, codes = read_index_json(src)
    assert collision_stats(codes)["colliding_items"] == 2
    resolved = resolve_collisions(codes, "dedup_level")
    artifact = SidArtifact(ids, resolved, {"codebook_sizes": [256, 256, 256, 2]})
    assert artifact.sid_string("7") == "<a_210><b_231><c_0><d_0>"
    assert artifact.sid_string("8") == "<a_210><b_231><c_0><d_1>"
    export_index_json(artifact, tmp_path / "ours.index.json")
    back_ids, back_codes = read_index_json(tmp_path / "ours.index.json")
    assert back_ids == ids and (back_codes == resolved).all()


@pytest.mark.parametrize("payload, message", [
    ({"1": "<a_1><b_2>"}, "list of SID tokens"),
    ({"1": ["<a_1>", "<b_2>"], "2": ["<a_1>"]}, "levels"),
    ({"1": ["<b_1>", "<a_2>"]}, "expected level"),
    ([], "non-empty JSON object"),
])
def test_bad_index_json_names_the_key(tmp_path, payload, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=message):
        read_index_json(path)


@pytest.mark.skipif(not REAL_INDEX.exists(), reason="shared MiniOneRec index not present")
def test_real_minionerec_index(tmp_path):
    ids, codes = read_index_json(REAL_INDEX)
    stats = collision_stats(codes)
    assert codes.shape == (len(ids), 3) and 0 < stats["colliding_items"] < 100
    resolved = resolve_collisions(codes, "dedup_level")
    assert collision_stats(resolved)["collision_rate"] == 0.0
    write_index_json(tmp_path / "back.json", ids, codes)
    assert json.loads((tmp_path / "back.json").read_text()) == json.loads(REAL_INDEX.read_text())
