"""Published rows come from the dataset's own files (``<domain>.published.json`` beside the test file), are tied to
that test file by its sha256, and reach the report with their label and source."""

from __future__ import annotations

import hashlib
import json

import pytest

from data_builders.dataset import DataError
from data_builders.embedded import DOMAINS, EMBEDDED_DIR
from data_builders.minionerec import import_minionerec
from eval.published import published_sources, published_table
from eval.report import published_rows, published_setup_lines, top_published


def write_published(folder, name="Mini", **override):
    test_sha = hashlib.sha256((folder / f"{name}.test.csv").read_bytes()).hexdigest()
    doc = {"source": "Some paper, table 2", "label": "published, their split", "protocol": "trained on their rows",
           "test_file_sha256": test_sha, "models": {"SASRec": {"hr@3": 0.05, "hr@5": 0.07, "hr@10": 0.1,
                                                               "ndcg@10": 0.06}}}
    doc.update(override)
    (folder / f"{name}.published.json").write_text(json.dumps(doc))
    return doc


def test_importer_records_the_published_file_in_the_dataset_meta(mini_minionerec):
    assert "published" not in import_minionerec(mini_minionerec, "Mini").source
    doc = write_published(mini_minionerec)
    built = import_minionerec(mini_minionerec, "Mini")
    assert built.source["published"]["models"] == doc["models"]
    meta = {"source": built.source}
    assert published_table(meta) == {"SASRec": {"Mini": doc["models"]["SASRec"]}}
    assert published_sources(meta) == {"Mini": {k: doc[k] for k in ("source", "label", "protocol")}}


@pytest.mark.parametrize("override, match", [
    ({"test_file_sha256": "0" * 64}, "another test file"),
    ({"models": {}}, "field 'models'"),
    ({"models": {"SASRec": {"hr@10": 1.5}}}, r"hr@10 = 1.5 is not a number in \[0, 1\]"),
    ({"models": {"SASRec": {"precision": 0.1}}}, "unknown metric 'precision'"),
    ({"label": ""}, "field 'label'"),
])
def test_bad_published_file_is_a_clear_error_naming_it(mini_minionerec, override, match):
    write_published(mini_minionerec, **override)
    with pytest.raises(DataError, match=match) as e:
        import_minionerec(mini_minionerec, "Mini")
    assert "Mini.published.json" in str(e.value)


@pytest.mark.parametrize("domain", DOMAINS)
def test_embedded_domains_carry_minionerec_table(domain):
    source = import_minionerec(EMBEDDED_DIR / domain, domain).source
    models = source["published"]["models"]
    assert {"SASRec", "TIGER", "MiniOneRec"} <= set(models)
    assert all(set(v) == {"hr@3", "ndcg@3", "hr@5", "ndcg@5", "hr@10", "ndcg@10"} for v in models.values())
    assert models["MiniOneRec"]["hr@10"] > models["SASRec"]["hr@10"]  # the paper's headline ordering


def test_report_labels_rows_with_the_metadata_label():
    metrics = {"ks": [1, 3, 5, 10], "published": {"SASRec": {"Mini": {"hr@3": .05, "hr@5": .07, "hr@10": .1},
                                                              "Other": {"hr@10": .2}},
                                                   "TIGER": {"Mini": {"hr@3": .06, "hr@5": .08, "hr@10": .12}}},
               "published_sources": {"Mini": {"source": "Some paper", "label": "published, their split",
                                              "protocol": "trained on theirs"}}}
    rows = published_rows(metrics, "Mini")
    assert len(rows) == 2 and rows[0].startswith("| SASRec (published, their split) |")
    assert published_rows(metrics, "Other")[0].startswith("| SASRec (published) |")  # no source recorded
    lines = published_setup_lines(metrics)
    assert any("Mini: Some paper" in line and "trained on theirs" in line for line in lines)
    assert [m for m, _ in top_published(metrics, "Mini", (3, 5, 10), n=1)] == ["TIGER"]
    assert "No published rows" in published_setup_lines({"ks": [10], "published": {}})[0]
