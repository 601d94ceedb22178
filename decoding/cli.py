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
from dataclasses import dataclass
from pathlib import Path
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
    p.add_argument("--sids", default=None,
                   help="a newer version of the checkpoint's SID artifact, with items added since training "
                        "(python -m tokenization.add_items); default: the one it trained with")
    p.add_argument("--new_item_levels", type=int, default=None,
                   help="items --sids added: SID levels the model scores them by (default: chosen on valid)")
    p.add_argument("--new_item_offset", type=float, default=None,
                   help="items --sids added: log P added for their unscored codes (default: chosen on valid; "
                        "-inf-like -1e9 = never)")
    p.add_argument("--domain", help="recommend from this domain (default: the history's)")
    p.add_argument("--k", type=int, default=10, help="items to return")
    p.add_argument("--num_beams", type=int, default=None, help="beam width (default k; more = closer to exact)")
    p.add_argument("--exclude_history", action="store_true", help="leave the history's items out")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--cdr_path", choices=("router", "domain", "universal", "average"), default=None,
                   help="a GenCDR run (python -m sft.cross_domain output) as --checkpoint: which distribution decodes "
                        "(default: router if trained, else domain)")
    p.add_argument("--global_trie", action="store_true",
                   help="GenCDR: recommend from every domain's items (cross-domain); the history's domain still "
                        "picks the domain adapter")
    return p


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


@dataclass(frozen=True)
class Request:
    """One checked request: the history (item ids, oldest first), its domain, K, beams, and whether seen items go."""

    history: tuple[str, ...]
    domain: str
    k: int
    num_beams: int
    exclude_history: bool = False

    @property
    def width(self) -> int:
        """Items to decode: K, plus the history's distinct items when they are left out afterwards."""
        return self.k + (len(set(self.history)) if self.exclude_history else 0)


class LoadedRecommender:
    """A checkpoint, its dataset and catalogue, loaded once: ``resolve`` checks a request (before any model is
    loaded), ``run`` answers several with one batched trie beam search per (width, beams) group."""

    def __init__(self, checkpoint: str | Path, dataset_dir: str | Path, sids: str | Path | None = None,
                 new_item_levels: int | None = None, new_item_offset: float | None = None,
                 cdr_path: str | None = None, global_trie: bool = False):
        from data_builders.dataset import load_rec_dataset
        from decoding.catalogue import Catalogue
        from decoding.cold_start import DEFAULT_OFFSET, DEFAULT_PREFIX_LEVELS, ColdStart
        from tokenization.add_items import artifact_items, check_extends
        from tokenization.artifact import load_sid_artifact

        self.checkpoint = str(checkpoint)
        self.cdr = None
        self.gencdr = (Path(checkpoint) / "universal" / "genrec_cdr.json").is_file() or any(
            Path(checkpoint).glob("domains/*/genrec_cdr.json"))
        check(self.gencdr or (cdr_path is None and not global_trie), "--cdr_path/--global_trie",
              f"{checkpoint} is not a GenCDR run (python -m sft.cross_domain output)")
        if self.gencdr:  # its phase-1 meta names the dataset, SID artifact and history length
            from sft.cross_domain import universal_of

            check(sids is None, "--sids", "items added since training are not supported for a GenCDR run")
            self.meta = read_json_file(universal_of(Path(checkpoint)) / "genrec_cdr.json", "GenCDR meta")
            has_router = (Path(checkpoint) / "router" / "genrec_cdr.json").is_file()
            self.cdr_path = cdr_path or ("router" if has_router else "domain")
            check(self.cdr_path != "router" or has_router, "--cdr_path", f"{checkpoint} has no router/ (train the "
                  "`router` stage, or use --cdr_path domain)")
            self.global_trie = global_trie
        else:
            self.meta = read_json_file(require_dir(checkpoint, "--checkpoint", containing="genrec_sft.json")
                                       / "genrec_sft.json", "checkpoint meta")
        self.dataset = load_rec_dataset(require_dir(dataset_dir, "--dataset", containing="meta.json"))
        check(self.meta.get("dataset_hash") in (None, self.dataset.dataset_hash), "--dataset",
              f"{checkpoint} was trained on dataset {str(self.meta.get('dataset_hash'))[:12]}, {dataset_dir} is "
              f"{self.dataset.dataset_hash[:12]}")
        check(self.meta.get("sid_dir"), str(checkpoint), "checkpoint meta names no sid_dir")
        artifact = load_sid_artifact(self.meta["sid_dir"])
        self.cold: ColdStart | None = None
        if sids is not None:  # items added since training: same codebooks, the trained SIDs unchanged
            newer = load_sid_artifact(require_dir(sids, "--sids", containing="meta.json"))
            check_extends(artifact, newer, "--sids")
            added = tuple(newer.item_ids[len(artifact.item_ids):])
            levels = DEFAULT_PREFIX_LEVELS if new_item_levels is None else new_item_levels
            check_range("--new_item_levels", levels, 1, newer.levels)
            offset = DEFAULT_OFFSET if new_item_offset is None else new_item_offset
            check(offset <= 0, "--new_item_offset", f"a log-probability, <= 0; got {offset}")
            self.cold = ColdStart(added, levels, offset) if added else None
            artifact = newer
        self.sid_dir = str(artifact.path)
        self.items = {it["item_id"]: it for it in self.dataset.items.to_list()}
        self.items.update({it["item_id"]: it for it in artifact_items(artifact)})  # new items outside the dataset
        self.catalogue = Catalogue.from_artifact(artifact, {i: it["domain"] for i, it in self.items.items()})
        self.domains = sorted({it["domain"] for it in self.items.values()})
        self._known = set(self.catalogue.item_ids)
        self.model = self.tokenizer = None

    def load_model(self) -> None:
        from sft.modeling import load_sft_checkpoint

        if self.model is None and self.gencdr:
            from eval.models.cross_domain import CrossDomainRecommender

            self.cdr = CrossDomainRecommender(self.checkpoint, path=self.cdr_path, global_trie=self.global_trie)
            self.cdr.fit(self.dataset, [], None)
            self.cdr.catalogue = self.catalogue  # one catalogue (and trie) for recommend() and the mixture search
            self.model, self.tokenizer = self.cdr.cdr.model, self.cdr.cdr.tokenizer
        elif self.model is None:
            self.model, self.tokenizer, _ = load_sft_checkpoint(self.checkpoint)

    def titles_to_ids(self, titles: Sequence[str], domain: str | None) -> list[str]:
        """Item ids of exactly matching titles (case and whitespace ignored; within ``domain`` if given)."""
        import difflib

        by_title: dict[str, list[str]] = {}
        original: dict[str, str] = {}
        for it in self.items.values():
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
            check(len(ids) == 1, "--titles", f"{title!r} names {len(ids)} items {ids[:5]}: pass --history with "
                                             "the id")
            out.append(ids[0])
        return out

    def user_history(self, user: str) -> list[str]:
        """Everything known about ``user``: the newest of their rows (any split), its history + target."""
        rows = [r for split in ("test", "valid", "train") for r in self.dataset.splits[split].to_list()
                if r["user_id"] == user]
        check(rows, "--user", f"{user!r} is not a user of {self.dataset.path}")
        newest = max(rows, key=lambda r: (r["timestamp"] or 0, len(r["history"])))
        return [*newest["history"], newest["target"]]

    def resolve(self, history: Sequence[str] | None = None, titles: Sequence[str] | None = None,
                user: str | None = None, domain: str | None = None, k: int = 10, num_beams: int | None = None,
                exclude_history: bool = False) -> Request:
        """A :class:`Request` from exactly one of ``history`` (ids), ``titles``, ``user``; UserError otherwise."""
        check(sum(x is not None for x in (history, titles, user)) == 1, "request",
              "give exactly one of history (item ids), titles, user")
        check(isinstance(k, int) and not isinstance(k, bool), "--k", f"must be an integer, got {k!r}")
        check_range("--k", k, 1)
        check(num_beams is None or isinstance(num_beams, int), "--num_beams",
              f"must be an integer, got {num_beams!r}")
        check_range("--num_beams", num_beams, k, allow_none=True)
        check(isinstance(exclude_history, bool), "--exclude_history", f"must be true or false, got {exclude_history!r}")
        if domain is not None:
            check(domain in self.domains, "--domain", f"{domain!r} is not a domain of {self.dataset.path} (it has "
                                                      f"{self.domains})")
        if history is not None:
            check(isinstance(history, (list, tuple)) and history and all(isinstance(i, str) for i in history),
                  "--history", "must be a non-empty list of item ids")
            unknown = [i for i in history if i not in self.items]
            check(not unknown, "--history",
                  f"unknown item ids {unknown[:5]} (not in {self.dataset.path}/items.parquet)")
            ids = list(history)
        elif titles is not None:
            check(isinstance(titles, (list, tuple)) and titles and all(isinstance(t, str) for t in titles),
                  "--titles", "must be a non-empty list of titles")
            ids = self.titles_to_ids(titles, domain)
        else:
            check(isinstance(user, str), "--user", f"must be a user id string, got {user!r}")
            ids = self.user_history(user)
        missing = [i for i in ids if i not in self._known]
        check(not missing, "--checkpoint", f"items {missing[:5]} have no SID in the checkpoint's artifact")
        seen = sorted({self.items[i]["domain"] for i in ids})
        domain = domain or (seen[0] if len(seen) == 1 else None)
        check(domain is not None, "--domain", f"the history spans domains {seen}: name the one to recommend from")
        req = Request(tuple(ids), domain, k, num_beams or k, exclude_history)
        if self.gencdr and self.cdr_path != "universal":  # the domain adapter must exist: say so before loading
            adapters = sorted(p.parent.name for p in Path(self.checkpoint).glob("domains/*/genrec_cdr.json"))
            check(domain in adapters, "--domain", f"{domain!r} has no adapter in {self.checkpoint} (adapters: "
                  f"{adapters or 'none'}); use --cdr_path universal or train its adapter")
        pool = len(self.catalogue.item_ids) if self.gencdr and self.global_trie else self.catalogue.domain_size(domain)
        size = pool - (req.width - k)
        check(k <= size, "--k", f"{k} is more than the {size} items {domain} can return")
        return req

    def run(self, requests: Sequence[Request]) -> list[dict[str, Any]]:
        """Answers in request order; one batched beam search per (width, beams) group (results do not depend on
        the batch: decoding.recommend is batch-invariant, tested)."""
        from decoding.recommend import recommend

        self.load_model()
        answers: list[dict[str, Any] | None] = [None] * len(requests)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.width, max(r.num_beams, r.width)), []).append(i)
        for (width, beams), idx in groups.items():
            domains = [requests[i].domain for i in idx]
            search = self.cdr.search(domains) if self.cdr is not None else None
            recs = recommend(self.model, self.tokenizer, self.catalogue, [list(requests[i].history) for i in idx],
                             k=width, domains=None if search is not None and self.global_trie else domains,
                             num_beams=beams, batch_size=max(len(idx), 1),
                             max_history=self.meta.get("history_len", 10), show_progress=False, search=search)
            if self.cold is not None:  # items added since training, merged by their SID prefix
                from decoding.cold_start import merge, new_item_scores

                new = new_item_scores(self.model, self.tokenizer, self.catalogue,
                                      [list(requests[i].history) for i in idx], [requests[i].domain for i in idx],
                                      self.cold.items, self.cold.prefix_levels,
                                      max_history=self.meta.get("history_len", 10))
                recs = [merge(rec, n, self.cold.offset, width) for rec, n in zip(recs, new)]
            for i, rec in zip(idx, recs):
                answers[i] = self.answer(requests[i], rec)
        return answers  # type: ignore[return-value]

    def answer(self, req: Request, rec: list[tuple[str, float]]) -> dict[str, Any]:
        if req.exclude_history:
            rec = [r for r in rec if r[0] not in set(req.history)]
        info = self.items
        return {"checkpoint": self.checkpoint, "domain": req.domain, "k": req.k,
                "history": [{"item_id": i, "title": info[i]["title"]} for i in req.history],
                "items": [{"rank": r + 1, "item_id": i, "title": info[i]["title"], "domain": info[i]["domain"],
                           "score": round(float(s), 4), "sid": self.catalogue.sid_string(i)}
                          for r, (i, s) in enumerate(rec[:req.k])]}


def recommend_cli(argv: Sequence[str]) -> dict[str, Any]:
    a = build_parser().parse_args(argv)
    rec = LoadedRecommender(a.checkpoint, a.dataset, a.sids, a.new_item_levels, a.new_item_offset, a.cdr_path,
                            a.global_trie)
    req = rec.resolve(history=a.history, titles=a.titles, user=a.user, domain=a.domain, k=a.k,
                      num_beams=a.num_beams, exclude_history=a.exclude_history)  # checked before the model loads
    (out,) = rec.run([req])
    if a.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        newest = rec.items[req.history[-1]]["title"][:60]
        scope = f"every domain ({req.domain} adapter)" if rec.gencdr and rec.global_trie else req.domain
        print(f"top {a.k} of {scope} after {len(req.history)} items (newest: {newest!r}), {a.checkpoint}:")
        width = max(len("item_id"), *(len(r["item_id"]) for r in out["items"]))
        print(f"{'rank':>4}  {'log P':>8}  {'item_id':<{width}}  title")
        for r in out["items"]:
            print(f"{r['rank']:>4}  {r['score']:>8.3f}  {r['item_id']:<{width}}  {r['title'][:80]}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(recommend_cli, argv, prog="recommend")


if __name__ == "__main__":
    sys.exit(main())
