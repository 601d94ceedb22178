"""``python -m decoding.recommend``: ask a trained SFT / RL checkpoint for recommendations.

    python -m decoding.recommend --checkpoint artifacts/amazon18/sft_scratch_rl --user A1B2C3 --k 5
    python -m decoding.recommend --checkpoint artifacts/amazon18/sft_scratch --history B00X B00Y --k 10 --json
    python -m decoding.recommend --checkpoint artifacts/amazon18/sft_scratch --titles "Post-it Notes" --domain Office_Products

The history is item ids (``--history``), titles matched exactly (case and spacing ignored) against the catalogue
(``--titles``), or a user of the dataset (``--user``: the user's newest row, its history and target = everything
known about the user). The domain comes from the history's items unless ``--domain`` names it. Recommendations are
trie-constrained beam search (:func:`decoding.recommend.recommend`): K distinct real items of the domain, with
``log P(SID, EOS | prompt)``. Bad input (unknown id, title, user or domain, a history spanning domains, K above the
domain's size, a checkpoint of another dataset) ends with one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from data_builders.cli import UserError, check, check_range, read_json_file, require_dir, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m decoding.recommend", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a directory written by sft/train.py, rl/dpo.py or rl/grpo.py")
    p.add_argument("--dataset", default="artifacts/amazon18/dataset",
                   help="the dataset the checkpoint was trained on (data_builders.build output)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--history", nargs="+", metavar="ITEM_ID", help="item ids, oldest first")
    who.add_argument("--titles", nargs="+", metavar="TITLE", help="item titles, oldest first")
    who.add_argument("--user", help="a user id of the dataset (their newest row and its target)")
    p.add_argument("--domain", help="recommend from this domain (default: the history's)")
    p.add_argument("--k", type=int, default=10, help="items to return")
    p.add_argument("--num_beams", type=int, default=None, help="beam width (default k; more = closer to exact)")
    p.add_argument("--exclude_history", action="store_true", help="leave the history's items out")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def resolve_titles(titles: Sequence[str], items: list[dict], domain: str | None) -> list[str]:
    """Item ids of exactly matching titles (case and whitespace ignored; within ``domain`` if given)."""
    import difflib

    by_title: dict[str, list[str]] = {}
    original: dict[str, str] = {}
    for it in items:
        if domain is None or it["domain"] == domain:
            by_title.setdefault(_norm(it["title"]), []).append(it["item_id"])
            original.setdefault(_norm(it["title"]), it["title"])
    out = []
    for title in titles:
        ids = by_title.get(_norm(title), [])
        if not ids:
            close = difflib.get_close_matches(_norm(title), list(by_title), n=3, cutoff=0.6)
            hint = f"; close titles: {[original[c] for c in close]}" if close else ""
            raise UserError(f"--titles: no item titled {title!r}{' in ' + domain if domain else ''}{hint}")
        check(len(ids) == 1, "--titles", f"{title!r} names {len(ids)} items {ids[:5]}: pass --history with the id")
        out.append(ids[0])
    return out


def user_history(dataset, user: str) -> list[str]:
    """Everything known about ``user``: the newest of their rows (any split), its history + target."""
    rows = [r for split in ("test", "valid", "train") for r in dataset.splits[split].to_list()
            if r["user_id"] == user]
    check(rows, "--user", f"{user!r} is not a user of {dataset.path}")
    newest = max(rows, key=lambda r: (r["timestamp"] or 0, len(r["history"])))
    return [*newest["history"], newest["target"]]


def resolve_request(a: argparse.Namespace, dataset, catalogue) -> tuple[list[str], str]:
    """``(history, domain)`` checked against the catalogue."""
    items = dataset.items.to_list()
    domain_of = {it["item_id"]: it["domain"] for it in items}
    domains = sorted(set(domain_of.values()))
    if a.domain is not None:
        check(a.domain in domains, "--domain", f"{a.domain!r} is not a domain of {dataset.path} (it has {domains})")
    if a.history:
        unknown = [i for i in a.history if i not in domain_of]
        check(not unknown, "--history", f"unknown item ids {unknown[:5]} (not in {dataset.path}/items.parquet)")
        history = list(a.history)
    elif a.titles:
        history = resolve_titles(a.titles, items, a.domain)
    else:
        history = user_history(dataset, a.user)
    known = set(catalogue.item_ids)
    missing = [i for i in history if i not in known]
    check(not missing, "--checkpoint", f"items {missing[:5]} have no SID in the checkpoint's artifact")
    seen = sorted({domain_of[i] for i in history})
    domain = a.domain or (seen[0] if len(seen) == 1 else None)
    check(domain is not None, "--domain", f"the history spans domains {seen}: name the one to recommend from")
    size = catalogue.domain_size(domain) - (len(set(history)) if a.exclude_history else 0)
    check(a.k <= size, "--k", f"{a.k} is more than the {size} items {domain} can return")
    return history, domain


def recommend_cli(argv: Sequence[str]) -> dict[str, Any]:
    from data_builders.dataset import load_rec_dataset
    from decoding.catalogue import Catalogue
    from decoding.recommend import recommend
    from sft.modeling import load_sft_checkpoint
    from tokenization.artifact import load_sid_artifact

    a = build_parser().parse_args(argv)
    check_range("--k", a.k, 1)
    check_range("--num_beams", a.num_beams, a.k, allow_none=True)
    meta = read_json_file(require_dir(a.checkpoint, "--checkpoint", containing="genrec_sft.json")
                          / "genrec_sft.json", "checkpoint meta")
    dataset = load_rec_dataset(require_dir(a.dataset, "--dataset", containing="meta.json"))
    check(meta.get("dataset_hash") in (None, dataset.dataset_hash), "--dataset",
          f"{a.checkpoint} was trained on dataset {str(meta.get('dataset_hash'))[:12]}, {a.dataset} is "
          f"{dataset.dataset_hash[:12]}")
    check(meta.get("sid_dir"), str(a.checkpoint), "checkpoint meta names no sid_dir")
    catalogue = Catalogue.from_artifact(load_sid_artifact(meta["sid_dir"]), dataset)
    history, domain = resolve_request(a, dataset, catalogue)  # every input checked before the model loads
    model, tokenizer, _ = load_sft_checkpoint(a.checkpoint)
    want = a.k + (len(set(history)) if a.exclude_history else 0)
    (recs,) = recommend(model, tokenizer, catalogue, [history], k=want, domains=[domain],
                        num_beams=max(a.num_beams or 0, want), max_history=meta.get("history_len", 10),
                        show_progress=False)
    if a.exclude_history:
        recs = [r for r in recs if r[0] not in set(history)][:a.k]
    info = {it["item_id"]: it for it in dataset.items.to_list()}
    out = {"checkpoint": str(a.checkpoint), "domain": domain, "k": a.k,
           "history": [{"item_id": i, "title": info[i]["title"]} for i in history],
           "items": [{"rank": r + 1, "item_id": i, "title": info[i]["title"], "domain": info[i]["domain"],
                      "score": round(float(s), 4), "sid": catalogue.sid_string(i)} for r, (i, s) in enumerate(recs)]}
    if a.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"top {a.k} of {domain} after {len(history)} items (newest: {info[history[-1]]['title'][:60]!r}), "
              f"{a.checkpoint}:")
        width = max(len("item_id"), *(len(r["item_id"]) for r in out["items"]))
        print(f"{'rank':>4}  {'log P':>8}  {'item_id':<{width}}  title")
        for r in out["items"]:
            print(f"{r['rank']:>4}  {r['score']:>8.3f}  {r['item_id']:<{width}}  {r['title'][:80]}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(recommend_cli, argv, prog="recommend")


if __name__ == "__main__":
    sys.exit(main())
