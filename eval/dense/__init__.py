"""Dense retrieval baselines of seed 000 (Mini_XPERT) and their comparison methods, served with faiss.

* :mod:`eval.dense.morph` — the low-rank morph q = v + A (Bᵀ v) (Mini_XPERT) and the full-rank XPERT morph.
* :mod:`eval.dense.towers` — user towers: history pooling (LSTM / mean), the hypernetwork, the bi-encoder query.
* :mod:`eval.dense.losses` — InfoNCE with in-batch negatives.
* :mod:`eval.dense.training` — the training loop (domain-pure batches, peak RSS).
* :mod:`eval.dense.item_text` — item vectors: the metadata embeddings artifact or title-only embeddings.
* :mod:`eval.dense.finetune` — optional fine-tuning of the text encoder's last layers.
* :mod:`eval.dense.index` — faiss indexes (exact inner product, IVF, HNSW), one per domain.
* :mod:`eval.dense.bm25` — BM25 over the serialised item text.
* :mod:`eval.dense.recommenders` — the objects eval/run.py evaluates: random, bm25, bi-encoder, XPERT, Mini_XPERT.
"""
