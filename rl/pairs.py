"""Preference pairs for DPO: chosen = the target item's SID, rejected = items the model should rank lower.

Negative sources (``negatives`` per prompt, each its own pair — TRL's DPO losses are pairwise):

* ``self_hard`` — the highest-ranked wrong items of the SFT model's own trie-constrained beam search on the row
  (OneRec's "self-hard" negatives: the mistakes the model actually makes, not ones it already avoids).
* ``popular`` — the most interacted-with items of the row's domain in the training rows (not the target).
* ``random`` — seeded uniform items of the row's domain (not the target).

Completions end with the tokenizer's EOS token, as in SFT and decoding (a SID's score includes EOS).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Sequence

from data_builders.prompts import next_item_prompt
from decoding.catalogue import Catalogue

SOURCES = ("self_hard", "popular", "random")


def build_pairs(model, tokenizer, catalogue: Catalogue, rows: Sequence[dict], *, history_len: int,
                negatives: int = 1, source: str = "self_hard", num_beams: int | None = None,
                popularity_rows: Sequence[dict] = (), seed: int = 0, batch_size: int = 16,
                show_progress: bool = True) -> tuple[list[dict], dict]:
    """``(pairs, stats)``: pairs are ``{"prompt", "chosen", "rejected", "target", "rejected_item", "domain"}``;
    stats has ``target_in_beams`` (share of rows whose target the beams contain: how often the SFT model is already
    right on these rows) for ``self_hard``."""
    if source not in SOURCES:
        raise ValueError(f"negative source {source!r}; choose from {SOURCES}")
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    eos = tokenizer.eos_token
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; every SID ends with EOS")
    smallest = min(catalogue.domain_size(r["domain"]) for r in rows)
    if negatives + 1 > smallest:
        raise ValueError(f"negatives={negatives} needs {negatives + 1} items per domain; the smallest has {smallest}")
    stats: dict = {"rows": len(rows), "source": source}
    pools = {d: [catalogue.item_ids[int(i)] for i in idx] for d, idx in catalogue.domain_rows().items()}
    if source == "self_hard":
        from decoding.recommend import recommend

        beams = max(num_beams or 0, negatives + 1)
        was_training = model.training
        model.eval()
        recs = recommend(model, tokenizer, catalogue, [list(r["history"]) for r in rows], k=beams,
                         domains=[r["domain"] for r in rows], num_beams=beams, batch_size=batch_size,
                         max_history=history_len, show_progress=show_progress)
        model.train(was_training)
        ranked = [[item for item, _ in rec] for rec in recs]
        stats["target_in_beams"] = sum(r["target"] in items for r, items in zip(rows, ranked)) / len(rows)
        stats["beams"] = beams
        wrong = [[i for i in items if i != r["target"]][:negatives] for r, items in zip(rows, ranked)]
    elif source == "popular":
        counts: dict[str, Counter] = defaultdict(Counter)
        for r in popularity_rows:
            counts[r["domain"]][r["target"]] += 1
        wrong = []
        for r in rows:
            top = [i for i, _ in counts[r["domain"]].most_common(negatives + 1) if i != r["target"]][:negatives]
            if len(top) < negatives:  # a domain with few interacted items: fill from the catalogue
                top += [i for i in pools[r["domain"]] if i != r["target"] and i not in top][
                    : negatives - len(top)]
            wrong.append(top)
    else:
        rng = random.Random(seed)
        wrong = []
        for r in rows:
            pool = pools[r["domain"]]
            picks: list[str] = []
            while len(picks) < negatives:
                item = pool[rng.randrange(len(pool))]
                if item != r["target"] and item not in picks:
                    picks.append(item)
            wrong.append(picks)
    pairs = []
    for r, negs in zip(rows, wrong):
        prompt = next_item_prompt([catalogue.sid_string(i) for i in r["history"]], tokenizer, history_len)
        chosen = catalogue.sid_string(r["target"]) + eos
        for item in negs:
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": catalogue.sid_string(item) + eos,
                          "target": r["target"], "rejected_item": item, "domain": r["domain"]})
    stats["pairs"] = len(pairs)
    return pairs, stats

