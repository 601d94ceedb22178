"""What the report shows about how a generative row was made: its training curves and its SIDs' quality.

* :func:`checkpoint_curves` — the curves of a checkpoint and of every checkpoint it was trained from
  (``genrec_sft.json``'s ``parent_checkpoint``: RL → SFT), read from each one's ``metrics.jsonl``
  (:class:`sft.callbacks.MetricsLog`): SFT loss and valid NDCG@10 (constrained decoding on a fixed valid sample);
  RL: GRPO's reward and KL to the reference, DPO's implicit rewards β·log π/π_ref on chosen / rejected (their mean
  over a batch is DPO's per-pair KL term) and margin, and the valid NDCG@10 of the best-step selection.
* :func:`sid_quality` — the headline numbers of the SID artifact's ``quality.json`` (tokenization.quality).

Both are recorded in the evaluation's ``metrics.json`` (``training[method]["curves"]`` / ``["sid_quality"]``) so a
merged report keeps them with the row they belong to; a checkpoint without a log gives no curves, not an error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# metrics.jsonl key -> the report's name for it. Keys absent from a log are skipped.
SERIES = {
    "loss": "train loss",
    "eval_loss": "valid loss",
    "eval_ndcg@10": "valid NDCG@10",
    "valid_ndcg@10": "valid NDCG@10",
    "reward": "reward",
    "kl": "KL",
    "rewards/chosen": "β·log π/π_ref (chosen)",
    "rewards/rejected": "β·log π/π_ref (rejected)",
    "rewards/margins": "reward margin",
    "rewards/accuracies": "pair accuracy",
}
MAX_POINTS = 200  # per series: a long run is thinned evenly (first and last kept)


def thin(points: list[list[float]], n: int = MAX_POINTS) -> list[list[float]]:
    """At most ``n`` of ``points``, evenly spaced, the first and the last always kept."""
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def read_log(path: Path) -> dict[str, list[list[float]]]:
    """``{key: [[step, value], ...]}`` of the :data:`SERIES` keys in a ``metrics.jsonl`` (a line cut by a kill ends
    the log)."""
    series: dict[str, list[list[float]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        step = record.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key in SERIES:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, []).append([step, round(float(value), 6)])
    return {key: thin(points) for key, points in series.items()}


def checkpoint_curves(checkpoint: str | Path, max_depth: int = 4) -> list[dict]:
    """``[{"checkpoint", "stage", "series"}, ...]``, the first stage first (SFT, then RL), for ``checkpoint`` and
    the checkpoints it was trained from; stages whose log is missing are left out."""
    out, path = [], Path(checkpoint)
    for _ in range(max_depth):
        meta_path = path / "genrec_sft.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if (path / "metrics.jsonl").is_file():
            series = read_log(path / "metrics.jsonl")
            if series:
                out.append({"checkpoint": os.path.normpath(path), "stage": meta.get("stage") or "sft", "series": series})
        parent = meta.get("parent_checkpoint")
        if not parent:
            break
        path = Path(parent)
    return out[::-1]


def sid_quality(sid_dir: str | Path) -> dict | None:
    """Per level: utilisation, entropy / maximum, top-k share; collisions before / after resolution; the number of
    items. ``None`` when the artifact has no ``quality.json`` (external SIDs)."""
    path = Path(sid_dir) / "quality.json"
    if not path.is_file():
        return None
    q = json.loads(path.read_text())
    levels = [{k: level.get(k) for k in ("utilization", "entropy", "max_entropy", "top_k_share", "gini")
               if level.get(k) is not None} for level in q.get("levels", [])]
    return {"sid_dir": str(sid_dir), "n_items": q.get("n_items"), "top_k": q.get("top_k"), "levels": levels,
            "collisions_before": q.get("collisions_before"), "collisions_after": q.get("collisions_after"),
            "reconstruction_mse": q.get("reconstruction_mse")}
