"""Published results that belong to a dataset's test rows, read from the dataset's own files.

A domain folder may hold ``<name>.published.json`` beside its test file::

    {"source": "where the numbers come from",
     "label": "how report rows are labelled, e.g. published, different training data",
     "protocol": "which rows trained those models",
     "test_file_sha256": "<sha256 of the uncompressed test file they were scored on>",
     "models": {"SASRec": {"hr@10": 0.1088, "ndcg@10": 0.0806, ...}, ...}}

The importer checks it and records it in the dataset's ``meta.json`` (``source.published``); the evaluation report
shows those rows, labelled, beside ours. The hash ties the numbers to the exact test rows: a file whose hash does not
match the test file it sits beside is an error, never silently attached to other rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from data_builders.dataset import data_error
from data_builders.reading import read_json

METRIC = re.compile(r"^(hr|ndcg|recall|mrr)@[1-9][0-9]*$")
TEXT_FIELDS = ("source", "label", "protocol")


def read_published(path: Path, test_sha256: str) -> dict[str, Any]:
    """The checked content of a ``.published.json`` file for the test file whose sha256 is ``test_sha256``."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise data_error(path, None, f"expected a JSON object, got {type(doc).__name__}")
    for field in (*TEXT_FIELDS, "test_file_sha256"):
        if not isinstance(doc.get(field), str) or not doc[field].strip():
            raise data_error(path, f"field {field!r}", "missing or not a non-empty string")
    if doc["test_file_sha256"] != test_sha256:
        raise data_error(path, "field 'test_file_sha256'",
                         f"these results are for another test file ({doc['test_file_sha256'][:12]}...), not the "
                         f"one beside it ({test_sha256[:12]}...)")
    models = doc.get("models")
    if not isinstance(models, dict) or not models:
        raise data_error(path, "field 'models'", "missing or empty: expected {model: {metric: value}}")
    out = {}
    for model, values in models.items():
        if not isinstance(values, dict) or not values:
            raise data_error(path, f"model {model!r}", "expected a non-empty {metric: value} object")
        for metric, value in values.items():
            if not METRIC.match(metric):
                raise data_error(path, f"model {model!r}", f"unknown metric {metric!r} (expected e.g. hr@10, ndcg@5)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise data_error(path, f"model {model!r}", f"{metric} = {value!r} is not a number in [0, 1]")
        out[model] = {metric: float(value) for metric, value in values.items()}
    return {**{f: doc[f] for f in (*TEXT_FIELDS, "test_file_sha256")}, "models": out}
