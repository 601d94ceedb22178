"""GenCDR (seed 001) as an evaluation method: universal experts, domain adapters and the user router, decoded by
:func:`decoding.mixture.mixture_beam_search` through :func:`decoding.recommend.recommend`.

``path`` selects what a row decodes with:

* ``universal`` — base + universal experts (α = 1);
* ``domain``    — + the row's domain LoRA alone (α = 0);
* ``average``   — the fixed mixture α = 0.5;
* ``router``    — α from the user router (the full model).

``constrained=False`` drops the prefix tree (invalid SIDs are misses); ``global_trie=True`` decodes over every
domain's items (cross-domain recommendation) while each row keeps its own domain adapter. A row whose domain has
no adapter is a clear error (:meth:`sft.cross_domain.CDRModel.domain_index`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from eval.recommenders import Query

PATHS = ("universal", "domain", "average", "router")


class CrossDomainRecommender:
    def __init__(self, directory: str, name: str = "gencdr", path: str = "router", constrained: bool = True,
                 global_trie: bool = False, num_beams: int | None = None, batch_size: int = 32):
        if path not in PATHS:
            raise ValueError(f"path={path!r}; choose from {PATHS}")
        self.directory, self.name, self.path = directory, name, path
        self.constrained, self.global_trie = constrained, global_trie
        self.num_beams, self.batch_size = num_beams, batch_size
        self.cdr = self.catalogue = None
        self.alphas: dict[str, list[float]] = {}  # α used per decoded row, by domain (path router / fixed)
        self.beams = [0, 0]  # [beams that decoded to no item, all beams]

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        from sft.cross_domain import load_cdr_dir

        self.cdr = load_cdr_dir(self.directory, with_domains=self.path != "universal",
                                with_router=self.path == "router")
        if self.cdr.meta.get("dataset_hash") not in (None, dataset.dataset_hash):
            raise ValueError(f"{self.directory} was trained on dataset {self.cdr.meta['dataset_hash'][:12]}, but the "
                             f"evaluation uses {dataset.dataset_hash[:12]}")
        if self.path == "router" and self.cdr.router is None:
            raise ValueError(f"{self.directory}: no router/ (train the `router` stage) for path `router`")
        self.history_len = self.cdr.meta["history_len"]
        self.catalogue = self.cdr.catalogue(dataset)
        self.train_log = {"checkpoint": str(self.directory), "stage": f"gencdr ({self.path})",
                          "domains": self.cdr.domains}

    def search(self, domains: Sequence[str]):
        """The beam search of :func:`decoding.recommend.recommend` for users with these domains."""
        import torch

        from decoding.mixture import mixture_beam_search

        cdr, path = self.cdr, self.path
        slots = cdr.domain_index(domains) if path != "universal" else None
        trie = self.catalogue.trie(cdr.tokenizer)
        global_root = trie.root(None)
        alphas = self.alphas

        def run(model, ids, mask, tables, roots, num_beams, eos, batch):
            rows = torch.tensor(batch)
            s = None if slots is None else slots[rows]
            alpha = {"universal": None, "domain": torch.zeros(len(batch)), "average": torch.full((len(batch),), 0.5),
                     "router": None}[path]
            if roots is not None and self.global_trie:
                roots = torch.full_like(roots, global_root)
            out, used = mixture_beam_search(model, ids, mask, tables, roots, num_beams, eos, s, alpha=alpha,
                                            router=cdr.router if path == "router" else None,
                                            constrained=self.constrained, global_root=global_root)
            for i, a in zip(batch, used.tolist()):
                alphas.setdefault(domains[i], []).append(a)
            self.beams[0] += int((out.leaves < 0).sum())  # beams that are no item (only without the trie)
            self.beams[1] += out.leaves.numel()
            return out
        return run

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        from decoding.recommend import recommend

        if self.cdr is None:
            raise RuntimeError("call fit() first: it loads the model")
        domains = [q.domain for q in queries]
        k = min(k, min(self.catalogue.domain_size(d) for d in domains))
        recs = recommend(self.cdr.model, self.cdr.tokenizer, self.catalogue, [list(q.history) for q in queries],
                         k=k, domains=None if self.global_trie else domains, num_beams=self.num_beams or k,
                         batch_size=self.batch_size, max_history=self.history_len, show_progress=False,
                         search=self.search(domains))
        out = [[item for item, _ in rec] for rec in recs]
        # without the trie a user may get no valid item at all: the evaluation needs a non-empty list, and an
        # item that cannot be the target (its history's first item) keeps the row a miss
        return [items or [q.history[0]] if not self.constrained else items for items, q in zip(out, queries)]


class PerDomainRecommender:
    """One model per domain (the "per-domain" baseline): each query goes to its domain's recommender."""

    def __init__(self, by_domain: dict[str, Any], name: str = "per_domain"):
        self.by_domain, self.name = dict(by_domain), name

    def fit(self, dataset: Any, train_rows: list[dict], embeddings: np.ndarray | None) -> None:
        for rec in self.by_domain.values():
            rec.fit(dataset, train_rows, embeddings)
        self.train_log = {d: getattr(r, "train_log", {}) for d, r in self.by_domain.items()}

    def recommend(self, queries: Sequence[Query], k: int) -> list[list[str]]:
        missing = sorted({q.domain for q in queries} - set(self.by_domain))
        if missing:
            raise ValueError(f"{self.name}: no model for domain(s) {missing} (it has {sorted(self.by_domain)})")
        out: list[list[str] | None] = [None] * len(queries)
        for domain, rec in self.by_domain.items():
            idx = [i for i, q in enumerate(queries) if q.domain == domain]
            if idx:
                for i, items in zip(idx, rec.recommend([queries[i] for i in idx], k)):
                    out[i] = items
        return out  # type: ignore[return-value]
