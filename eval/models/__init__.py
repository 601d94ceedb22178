"""The sequential and generative methods the protocol evaluates (the dense retrievers are in :mod:`eval.dense`).

Every class here satisfies :class:`eval.recommenders.Recommender` (``fit`` on training rows, ``recommend`` a batch of
:class:`eval.recommenders.Query`); the protocol — rows, candidate rules, metrics, slices, report — lives one level up
in :mod:`eval` and knows nothing about how a method scores.

* :mod:`eval.models.sasrec` — SASRec (ID embeddings) and semantic SASRec (text-embedding item inputs).
* :mod:`eval.models.stars` — STARS: SASRec over text embeddings with a semantic-similarity scorer.
* :mod:`eval.models.training` — shared pieces of SASRec and STARS: id tensors, next-item losses, the training loop.
* :mod:`eval.models.generative` — the SFT / RL checkpoint behind trie-constrained beam search.
* :mod:`eval.models.hybrid` — ``generative_rerank``: the constrained beams joined by STARS's top-N, re-scored.
* :mod:`eval.models.cold_start` — ``generative_cold``: items added after training merged into the beams.
"""
