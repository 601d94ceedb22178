"""The generative recommender (an SFT / RL checkpoint) as an evaluation method.

``fit`` loads the checkpoint (nothing is trained here); ``recommend`` runs trie-constrained beam search through
:func:`decoding.recommend` with the row's domain, so every recommended item is a real item of that domain. The
prompt comes from the one prompt builder, exactly as in training.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from eval.recommenders import Query

log = logging.getLogger(__name__)


class GenerativeRecommender:
    """``checkpoint``: a directory written by ``sft/train.py`` (or ``python -m sft.merge``)."""

    def __init__(self, checkpoint: str, name: str = "generative", num_beams: int | None = None,
                 batch_size: int = 16, history_len: int | None = None, sid_dir: str = ""):
        self.checkpoint, self.name, self.sid_dir = checkpoint, name, sid_dir
        self.num_beams, self.batch_size, self.history_len = num_beams, batch_size, history_len
        self.model = self.tokenizer = self.catalogue = None
        self.new_items: tuple[str, ...] = ()  # items of sid_dir after the trained artifact's (added since training)

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        import json
        from pathlib import Path

        from decoding.catalogue import Catalogue
        from sft.modeling import load_sft_checkpoint

        self.model, self.tokenizer, artifact = load_sft_checkpoint(self.checkpoint)
        meta = json.loads((Path(self.checkpoint) / "genrec_sft.json").read_text())
        if meta.get("dataset_hash") not in (None, dataset.dataset_hash):
            raise ValueError(f"{self.checkpoint} was trained on dataset {meta['dataset_hash'][:12]}, but the "
                             f"evaluation uses {dataset.dataset_hash[:12]}")
        self.history_len = self.history_len or meta.get("history_len", 10)
        if self.sid_dir:  # a newer version of the model's artifact: items added since training (tokenization.add_items)
            from tokenization.add_items import check_extends
            from tokenization.artifact import load_sid_artifact

            newer = load_sid_artifact(self.sid_dir)
            check_extends(artifact, newer, "generative_sid_dir")
            self.new_items = tuple(newer.item_ids[len(artifact.item_ids):])
            artifact = newer
        self.catalogue = Catalogue.from_artifact(artifact, dataset)
        self.train_log = self.provenance(meta)

    def provenance(self, meta: dict) -> dict:
        """What the report shows beside the row: the checkpoint, its training curves (SFT, then RL) and the quality
        of the SIDs it decodes (:mod:`eval.curves`)."""
        from eval.curves import checkpoint_curves, sid_quality

        sids = self.sid_dir or meta.get("sid_dir") or ""
        quality = (sid_quality(sids) if sids else None) or (sid_quality(meta["sid_dir"]) if meta.get("sid_dir")
                                                             else None)
        return {"checkpoint": str(self.checkpoint), "stage": meta.get("stage") or "sft",
                "curves": checkpoint_curves(self.checkpoint), "sid_quality": quality}

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        return self.recommend_scored(queries, k)[0]

    def recommend_scored(self, queries: Sequence[Query], k: int,
                         num_beams: int | None = None) -> tuple[list[list[str]], list[np.ndarray]]:
        """``(items, scores)``: per query up to ``k`` items, best first, and their log P(SID, EOS | prompt) (float64).

        ``k`` is capped at the smallest domain of the batch; ``num_beams`` overrides the configured beam width.
        """
        from decoding.recommend import recommend

        if self.model is None:
            raise RuntimeError("call fit() first: it loads the checkpoint")
        k = min(k, min(self.catalogue.domain_size(q.domain) for q in queries))
        beams = self.num_beams if num_beams is None else num_beams
        recs = recommend(self.model, self.tokenizer, self.catalogue, [list(q.history) for q in queries], k=k,
                         domains=[q.domain for q in queries], num_beams=beams, batch_size=self.batch_size,
                         max_history=self.history_len, show_progress=len(queries) > self.batch_size)
        return ([[item for item, _ in rec] for rec in recs],
                [np.array([score for _, score in rec], dtype=np.float64) for rec in recs])

    def score_items(self, queries: Sequence[Query], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per query ``log P(SID(c), EOS | prompt)`` of each candidate item (float64): the score beam search ranks
        by, for any item of the catalogue (:func:`decoding.score.score_items`)."""
        from decoding.score import score_items

        if self.model is None:
            raise RuntimeError("call fit() first: it loads the checkpoint")
        return score_items(self.model, self.tokenizer, self.catalogue, [list(q.history) for q in queries],
                           candidates, batch_size=self.batch_size, max_history=self.history_len)
