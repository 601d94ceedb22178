"""Merge single-domain datasets into one multi-domain dataset.

Item ids become ``<domain>:<id>`` so two domains can both have an item ``"0"``; every item and row keeps its
``domain``. Skip counters are prefixed with the domain; external SID indexes are merged with namespaced keys.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

from data_builders.dataset import BuiltDataset, DataError

SEPARATOR = ":"


def namespaced(domain: str, item_id: str) -> str:
    return f"{domain}{SEPARATOR}{item_id}"


def _domain_of(part: BuiltDataset) -> str:
    domains = {i.domain for i in part.items}
    if len(domains) != 1:
        raise DataError(f"merge expects single-domain parts; got domains {sorted(domains)}")
    return domains.pop()


def merge_datasets(parts: list[BuiltDataset]) -> BuiltDataset:
    """One dataset holding every part, ids namespaced by domain. Domains must be distinct."""
    domains = [_domain_of(p) for p in parts]
    if len(set(domains)) != len(domains):
        raise DataError(f"merge: duplicate domains {domains}")
    items, rows, skipped, sid_index = [], [], Counter(), {}
    for domain, part in zip(domains, parts):
        ns = lambda i, d=domain: namespaced(d, i)  # noqa: E731
        items += [replace(item, item_id=ns(item.item_id)) for item in part.items]
        rows += [replace(r, history=[ns(h) for h in r.history], target=ns(r.target)) for r in part.rows]
        skipped.update({f"{domain}/{k}": v for k, v in part.skipped.items()})
        if "sids.index.json" in part.extra_files:
            sid_index.update({ns(k): v for k, v in json.loads(part.extra_files["sids.index.json"]).items()})
    extra = {}
    if sid_index:
        extra["sids.index.json"] = (json.dumps(sid_index, sort_keys=True, ensure_ascii=False) + "\n").encode()
    source = {"format": "merged", "id_namespace": f"<domain>{SEPARATOR}<item_id>", "parts": [p.source for p in parts]}
    return BuiltDataset(items=items, rows=rows, source=source, skipped=skipped, extra_files=extra)
