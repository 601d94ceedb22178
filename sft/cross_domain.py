"""GenCDR training (seed 001): universal experts, then one LoRA per domain, then a user-level router.

    python -m sft.cross_domain --config configs/sft/gencdr_scratch.yaml [--seed 1 --output_dir ...]

Stages (``stages``), each written to its own directory under ``output_dir``:

1. ``universal`` — N LoRA experts on every targeted linear layer, mixed per token by a trainable gate
   (:mod:`sft.experts`), trained on every domain's rows (next-SID loss on packed user sequences). A pretrained base
   (SmolLM2 / any HF model) stays frozen except its SID rows; the ``scratch`` decoder has no pretrained weights to
   keep, so its base trains with the experts (``train_base: auto``). ``n_experts: 0`` trains a plain model: one
   model per domain (``domains: [X]``) and the merged model of the comparison are this stage alone.
2. ``domains`` — one LoRA per domain on that domain's rows; base and universal experts frozen. Saved by name
   (``domains/<domain>/``) with the hash of the universal weights they were trained on.
3. ``router`` — a VIB gate on the history representation (the universal path's last hidden state at the end of the
   prompt, plus the domain) giving α per user: ``P = α·P_universal + (1 − α)·P_domain``, each distribution first
   restricted to the trie's allowed tokens of the row's domain and renormalised (so training sees exactly what
   constrained decoding mixes, :mod:`decoding.mixture`). Loss: −log P(target SID) + β·KL(q(z | h) ‖ N(0, I)).

Every directory has ``genrec_cdr.json`` naming the SID artifact, dataset, base and (for adapters and the router)
the weights they belong to; :func:`load_cdr` refuses mismatches with one clear line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from data_builders.cli import (UserError, check, check_choice, check_output_dir, check_range, parse_config,
                               read_json_file, require_dir, run_cli)
from data_builders.dataset import DataError, load_rec_dataset, write_json
from sft.experts import GATES, add_domain_adapters, attach_experts, expert_layers, expert_state, \
    load_domain_state, routed
from sft.modeling import DEFAULT_LORA_TARGETS, sid_artifact_hash

log = logging.getLogger(__name__)

STAGES = ("universal", "domains", "router")
META = "genrec_cdr.json"
WEIGHTS = "weights.safetensors"
FORMAT = "genrec-cdr-1"


@dataclass
class CDRArgs:
    """Every setting of a GenCDR run (flat YAML keys, overridable on the command line)."""

    dataset_dir: str = "artifacts/amazon18/dataset"
    sid_dir: str = "artifacts/amazon18/sids_balanced"
    output_dir: str = "artifacts/amazon18/gencdr"
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    universal_dir: str = ""  # stages without `universal`: the trained phase-1 directory to build on
    domains: list[str] = field(default_factory=list)  # empty = every domain of the dataset
    train_splits: list[str] = field(default_factory=lambda: ["train", "valid"])
    history_len: int = 10
    model_name_or_path: str = "scratch"  # scratch | scratch:llama | a local HF checkpoint | embedded:smollm2-135m
    num_layers: int = 0  # HF models: keep the first N decoder layers (0 = all)
    scratch_hidden_size: int = 128
    scratch_layers: int = 4
    scratch_heads: int = 4
    scratch_dropout: float = 0.2
    train_base: str = "auto"  # auto (scratch: yes, a pretrained base: no) | yes | no
    # phase 1: universal experts (paper: N 4, rank 64, alpha 128 on a 7B model; the CPU default is smaller)
    n_experts: int = 4
    expert_rank: int = 16
    expert_alpha: float = 32.0
    gate: str = "learned"  # learned (softmax gate per token) | average (the "w/o gate" ablation: 1/N each)
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    lora_dropout: float = 0.05
    universal_epochs: float = 11.4  # the scratch recipe's budget (configs/sft/scratch.yaml: 2,293 steps x 32)
    # phase 2: one LoRA per domain
    domain_rank: int = 16
    domain_alpha: float = 32.0
    domain_epochs: float = 3.0
    domain_learning_rate: float = 1.0e-3
    # optimisation (both phases)
    batch_size: int = 32  # packed user sequences
    learning_rate: float = 1.0e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # phase 3: the user-level router
    router_hidden: int = 128
    router_latent: int = 16
    router_beta: float = 1.0e-3  # weight of the VIB KL term
    router_rows: int = 6000  # training windows the router is fitted on (a seeded sample of train_splits' rows)
    router_steps: int = 400
    router_batch_size: int = 256
    router_lr: float = 3.0e-3
    seed: int = 0
    threads: int = 1
    logging_steps: int = 50
    show_progress: bool = True


# ------------------------------------------------------------------------------------------------------- checks


def check_args(a: CDRArgs) -> None:
    check(a.stages, "stages", "is empty; give one or more of " + ", ".join(STAGES))
    for s in a.stages:
        check_choice("stages", s, STAGES)
    check(list(a.stages) == [s for s in STAGES if s in a.stages], "stages", f"{a.stages} must keep the order "
          f"{list(STAGES)}")
    check("universal" in a.stages or a.universal_dir, "universal_dir", "stages without `universal` build on a "
          "trained phase-1 directory: set universal_dir")
    check_choice("gate", a.gate, GATES)
    check_choice("train_base", a.train_base, ("auto", "yes", "no"))
    for name in ("n_experts", "num_layers", "warmup_steps"):
        check_range(name, getattr(a, name), 0)
    for name in ("expert_rank", "domain_rank", "batch_size", "router_hidden", "router_latent", "router_rows",
                 "router_steps", "router_batch_size", "history_len", "threads", "logging_steps",
                 "scratch_hidden_size", "scratch_layers", "scratch_heads"):
        check_range(name, getattr(a, name), 1)
    for name in ("expert_alpha", "domain_alpha", "universal_epochs", "domain_epochs", "learning_rate",
                 "domain_learning_rate", "router_lr", "max_grad_norm"):
        check_range(name, getattr(a, name), 0, lo_open=True)
    check_range("router_beta", a.router_beta, 0)
    check_range("weight_decay", a.weight_decay, 0)
    check_range("lora_dropout", a.lora_dropout, 0, 1, hi_open=True)
    check_range("scratch_dropout", a.scratch_dropout, 0, 1, hi_open=True)
    check(a.target_modules, "target_modules", "is empty; name the linear layers that get experts")
    check("router" not in a.stages or "domains" in a.stages or a.universal_dir, "stages",
          "the router mixes the universal and the domain paths: it needs the `domains` stage (or its output beside "
          "universal_dir)")


def is_scratch(spec: str) -> bool:
    from sft.models import SCRATCH_SPECS

    return spec in SCRATCH_SPECS


def trains_base(a: CDRArgs) -> bool:
    return a.train_base == "yes" or (a.train_base == "auto" and is_scratch(a.model_name_or_path))


# ----------------------------------------------------------------------------------------------- model building


def build_base(meta: dict, artifact, dataset=None):
    """``(model, tokenizer)``: the base of a GenCDR run with the SID vocabulary, experts attached (untrained)."""
    from sft.models import build_scratch_lm
    from sft.modeling import load_base
    from tokenization.vocab import extend_vocabulary

    spec = meta["model"]
    if is_scratch(spec):
        s = meta["scratch"]
        model, tok = build_scratch_lm(artifact.all_tokens(), spec, s["hidden_size"], s["layers"], s["heads"],
                                      seed=meta["seed"], dropout=s["dropout"])
    else:
        model, tok = load_base(spec, "lora", meta.get("num_layers") or None)
        extend_vocabulary(model, tok, artifact, init="semantic" if dataset is not None else "mean", dataset=dataset)
    e = meta["experts"]
    try:
        attach_experts(model, e["target_modules"], e["n"], e["rank"], e["alpha"], e["dropout"], e["gate"])
    except ValueError as err:
        raise UserError(f"target_modules: {err}") from None
    return model, tok


def sid_token_ids(tokenizer, artifact) -> list[int]:
    return tokenizer.convert_tokens_to_ids(artifact.all_tokens())


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class UserRouter(nn.Module):
    """α(user) = σ(w · z + b), z ~ q(z | h, domain) = N(μ, σ²) (VIB): a 2-layer MLP over the history representation
    ``h`` and the domain's one-hot. ``forward`` returns (α [B], KL [B]); in eval mode z = μ (deterministic)."""

    def __init__(self, hidden_size: int, n_domains: int, hidden: int = 128, latent: int = 16):
        super().__init__()
        self.n_domains = n_domains
        self.net = nn.Sequential(nn.Linear(hidden_size + n_domains, hidden), nn.GELU(), nn.Linear(hidden, 2 * latent))
        self.head = nn.Linear(latent, 1)

    def forward(self, h: torch.Tensor, domains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        onehot = F.one_hot(domains.clamp(min=0), self.n_domains).to(h.dtype)
        mu, logvar = self.net(torch.cat([h, onehot], dim=-1)).chunk(2, dim=-1)
        logvar = logvar.clamp(-8, 8)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        return torch.sigmoid(self.head(z)).squeeze(-1), kl


@dataclass
class CDRModel:
    """A loaded GenCDR model: ``domains[i]`` is the name of domain adapter slot ``i``."""

    model: nn.Module
    tokenizer: object
    artifact: object
    meta: dict
    domains: list[str]
    router: UserRouter | None = None
    dirs: dict = field(default_factory=dict)

    def catalogue(self, dataset):
        """The trie catalogue of the model's SID artifact with the dataset's item domains."""
        from decoding.catalogue import Catalogue

        return Catalogue.from_artifact(self.artifact, dataset)

    def domain_index(self, names) -> torch.Tensor:
        """int64 [B] adapter slots of ``names``; a domain without an adapter is a clear error."""
        missing = sorted({n for n in names if n not in self.domains})
        if missing:
            have = self.domains or "none"
            raise UserError(f"domain {missing[0]!r} has no adapter in this GenCDR model (adapters: {have}); train "
                            "one with the `domains` stage, or decode it with the universal experts only")
        return torch.tensor([self.domains.index(n) for n in names], dtype=torch.long)


def load_universal(path: str | Path) -> CDRModel:
    """The phase-1 model of ``path`` (experts attached; no domain adapters)."""
    from safetensors.torch import load_file

    from tokenization.artifact import load_sid_artifact

    path = require_dir(path, "GenCDR universal directory", containing=META)
    meta = read_json_file(path / META, "GenCDR universal meta")
    check(meta.get("stage") == "universal", str(path / META), f"stage is {meta.get('stage')!r}, not 'universal'")
    artifact = load_sid_artifact(meta["sid_dir"])
    if sid_artifact_hash(artifact) != meta["sid_hash"]:
        raise DataError(f"{path}: trained with SID artifact {meta['sid_hash'][:12]}, but {meta['sid_dir']} now holds "
                        f"{sid_artifact_hash(artifact)[:12]}; use the artifact the model was trained with")
    weights = path / WEIGHTS
    check(weights.is_file(), str(weights), "missing: the universal stage did not finish saving")
    model, tok = build_base(meta, artifact)
    state = load_file(str(weights))
    own = dict(model.state_dict())
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise DataError(f"{weights}: weights of another model ({unknown[0]!r} is not a parameter of the rebuilt "
                        f"base {meta['model']!r})")
    missing = model.load_state_dict(state, strict=False).missing_keys
    absent = [k for k in missing if "domain_" not in k]
    if meta["train_base"] and absent:
        raise DataError(f"{weights}: incomplete ({absent[0]!r} missing)")
    model.eval()
    return CDRModel(model, tok, artifact, meta, [], dirs={"universal": str(path)})


def load_cdr(universal_dir: str | Path, adapters: dict[str, str | Path] | None = None,
             router_dir: str | Path | None = None) -> CDRModel:
    """Universal model + named domain adapters (+ the router trained on exactly those), each checked against the
    others: an adapter of another universal model, SID artifact or rank, or a router of other adapters, is refused."""
    from safetensors.torch import load_file

    cdr = load_universal(universal_dir)
    universal_hash = file_hash(Path(universal_dir) / WEIGHTS)
    adapters = dict(sorted((adapters or {}).items()))
    metas = {}
    for name, adir in adapters.items():
        adir = require_dir(adir, f"domain adapter {name!r}", containing=META)
        m = read_json_file(adir / META, f"domain adapter {name!r} meta")
        check(m.get("stage") == "domain", str(adir / META), f"stage is {m.get('stage')!r}, not 'domain'")
        check(m.get("domain") == name, str(adir), f"is the adapter of domain {m.get('domain')!r}, not {name!r}")
        if m.get("sid_hash") != cdr.meta["sid_hash"]:
            raise DataError(f"{adir}: domain adapter {name!r} was trained with another SID artifact than the "
                            f"universal model {universal_dir}")
        if m.get("universal_hash") != universal_hash:
            raise DataError(f"{adir}: domain adapter {name!r} was trained on other universal weights "
                            f"({str(m.get('universal_hash'))[:12]}) than {universal_dir} ({universal_hash[:12]})")
        metas[name] = (adir, m)
    ranks = {(m["rank"], m["alpha"]) for _, m in metas.values()}
    check(len(ranks) <= 1, "adapters", f"domain adapters of different rank / alpha {sorted(ranks)}; train them with "
          "one setting")
    if metas:
        rank, alpha = ranks.pop()
        add_domain_adapters(cdr.model, len(metas), rank, alpha)
        for i, (name, (adir, _)) in enumerate(metas.items()):
            state = load_file(str(adir / "adapter.safetensors")) if (adir / "adapter.safetensors").is_file() else None
            check(state is not None, str(adir), "adapter.safetensors missing: the domain stage did not finish")
            try:
                load_domain_state(cdr.model, i, state)
            except ValueError as err:
                raise DataError(f"{adir}: {err}") from None
        cdr.domains = list(metas)
        cdr.dirs["domains"] = {n: str(d) for n, (d, _) in metas.items()}
    if router_dir:
        rdir = require_dir(router_dir, "GenCDR router", containing=META)
        m = read_json_file(rdir / META, "GenCDR router meta")
        want = {n: file_hash(Path(d) / "adapter.safetensors") for n, (d, _) in metas.items()}
        if m.get("universal_hash") != universal_hash or m.get("adapters") != want:
            raise DataError(f"{rdir}: the router was trained with other adapters (domains "
                            f"{sorted(m.get('adapters') or {})}, universal {str(m.get('universal_hash'))[:12]}) than "
                            f"the ones loaded ({sorted(want)}, universal {universal_hash[:12]})")
        router = UserRouter(cdr.model.config.hidden_size, len(cdr.domains), m["hidden"], m["latent"])
        router.load_state_dict(load_file(str(rdir / "router.safetensors")))
        cdr.router = router.eval()
        cdr.dirs["router"] = str(rdir)
    cdr.model.eval()
    return cdr


def load_cdr_dir(output_dir: str | Path, with_domains: bool = True, with_router: bool = True) -> CDRModel:
    """:func:`load_cdr` on a ``python -m sft.cross_domain`` output directory (universal/, domains/*, router/)."""
    out = require_dir(output_dir, "GenCDR output directory")
    adapters = {p.name: p for p in sorted((out / "domains").glob("*")) if (p / META).is_file()} \
        if with_domains else {}
    router = out / "router" if with_router and (out / "router" / META).is_file() else None
    return load_cdr(universal_of(out), adapters, router)


def universal_of(output_dir: Path) -> Path:
    """The phase-1 directory of a run: its own ``universal/``, or (a run of the later stages with ``universal_dir``)
    the one its domain adapters name."""
    own = output_dir / "universal"
    if (own / META).is_file():
        return own
    for p in sorted((output_dir / "domains").glob(f"*/{META}")):
        named = read_json_file(p, "domain adapter meta").get("universal_dir")
        if named:
            return Path(named)
    raise UserError(f"{output_dir}: no universal/ and no domain adapter naming one: not a GenCDR run directory")


# ------------------------------------------------------------------------------------------------------ training


def packed_by_domain(dataset, artifact, tokenizer, splits, domains, history_len, seed) -> list[tuple[list, list, int]]:
    """``(input_ids, labels, domain index)`` packed user sequences of every listed domain
    (:func:`data_builders.examples.packed_sequence_examples`), in a seeded shuffled order."""
    from data_builders.examples import packed_sequence_examples, sequence_examples
    from data_builders.prompts import is_sid_only

    out = []
    for i, d in enumerate(domains):
        rows = [r for s in splits for r in dataset.splits[s] if r["domain"] == d]
        if is_sid_only(tokenizer):
            packed = packed_sequence_examples(rows, artifact, tokenizer, history_len, seed)
            out += [(p["input_ids"], p["labels"], i) for p in packed]
            continue
        # a text tokenizer: one window per sequence, the prompt tokenised as decoding does (TRL's way), loss on the
        # SID and the EOS after it
        for ex in sequence_examples(rows, artifact, tokenizer, max_history=history_len):
            prompt = tokenizer(ex["prompt"])["input_ids"]
            target = tokenizer(ex["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.append((prompt + target, [-100] * len(prompt) + target, i))
    random.Random(seed).shuffle(out)
    return out


def collate(seqs, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s[0]) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, (x, y, _) in enumerate(seqs):
        ids[j, :len(x)], labels[j, :len(y)], mask[j, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask,
            "domains": torch.tensor([s[2] for s in seqs], dtype=torch.long)}


def train_loop(model, params, seqs, *, epochs: float, a: CDRArgs, lr: float, out_dir: Path, desc: str,
               route_domains: bool, sid_rows: list[int] | None = None) -> dict:
    """AdamW (constant lr after linear warmup) over ``seqs`` for ``epochs``; loss curve to ``metrics.jsonl``.
    ``route_domains``: each row runs with its own domain adapter. ``sid_rows``: only these embedding rows train."""
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    steps = max(1, math.ceil(epochs * len(seqs) / a.batch_size))
    def decays(n, p):  # no decay on embeddings / the output head: their frozen rows must not shrink
        return p.ndim >= 2 and "embed" not in n and "lm_head" not in n

    decay = [p for n, p in params if decays(n, p)]
    other = [p for n, p in params if not decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, a.warmup_steps)))
    if sid_rows is not None:  # a pretrained base: only the SID rows of the embedding (and an untied head) change
        emb = model.get_input_embeddings().weight
        keep = torch.zeros(emb.shape[0], 1)
        keep[torch.tensor(sid_rows)] = 1
        head = model.get_output_embeddings()
        for w in {id(t): t for t in (emb, None if head is None else head.weight) if t is not None}.values():
            if w.requires_grad:
                w.register_hook(lambda g: g * keep.to(g.dtype))
    rng = random.Random(a.seed)
    order: list[int] = []
    model.train()
    log_path = out_dir / "metrics.jsonl"
    start, running, n_run = time.perf_counter(), 0.0, 0
    with open(log_path, "w", encoding="utf-8") as logf, tqdm(total=steps, desc=desc, disable=not a.show_progress) as bar:
        for step in range(1, steps + 1):
            if len(order) < a.batch_size:
                more = list(range(len(seqs)))
                rng.shuffle(more)
                order += more
            batch = collate([seqs[i] for i in order[:a.batch_size]], pad)
            del order[:a.batch_size]
            with routed(model, universal=True, domains=batch["domains"] if route_domains else None):
                loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], a.max_grad_norm)
            opt.step()
            sched.step()
            running, n_run = running + loss.item(), n_run + 1
            bar.update(1)
            if step % a.logging_steps == 0 or step == steps:
                rec = {"step": step, "loss": running / n_run, "learning_rate": sched.get_last_lr()[0],
                       "epoch": step * a.batch_size / len(seqs), "seconds": round(time.perf_counter() - start, 1)}
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
                running, n_run = 0.0, 0
    model.eval()
    return {"steps": steps, "seconds": round(time.perf_counter() - start, 1), "sequences": len(seqs)}


def replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)


def fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def run_universal(a: CDRArgs, dataset, artifact, domains: list[str]) -> Path:
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "stage": "universal", "model": a.model_name_or_path, "num_layers": a.num_layers,
            "scratch": {"hidden_size": a.scratch_hidden_size, "layers": a.scratch_layers, "heads": a.scratch_heads,
                        "dropout": a.scratch_dropout},
            "experts": {"n": a.n_experts, "rank": a.expert_rank, "alpha": a.expert_alpha, "gate": a.gate,
                        "dropout": a.lora_dropout, "target_modules": list(a.target_modules)},
            "train_base": trains_base(a), "domains": domains, "train_splits": list(a.train_splits),
            "sid_dir": a.sid_dir, "sid_hash": sid_artifact_hash(artifact), "dataset_hash": dataset.dataset_hash,
            "history_len": a.history_len, "seed": a.seed, "command": " ".join(sys.orig_argv)}
    torch.manual_seed(a.seed)
    model, tok = build_base(meta, artifact, dataset)
    base_trains = meta["train_base"]
    for n, p in model.named_parameters():
        p.requires_grad_(base_trains or ".expert_" in n or (".gate." in n and ".base." not in n)
                         or "embed_tokens" in n or n.startswith("lm_head"))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    check(params, "n_experts", "0 with train_base: no — nothing would train")
    seqs = packed_by_domain(dataset, artifact, tok, a.train_splits, domains, a.history_len, a.seed)
    final = Path(a.output_dir) / "universal"
    tmp = fresh_tmp(final)
    info = train_loop(model, params, seqs, epochs=a.universal_epochs, a=a, lr=a.learning_rate, out_dir=tmp,
                      desc="universal experts" if a.n_experts else "model", route_domains=False,
                      sid_rows=None if base_trains else sid_token_ids(tok, artifact))
    state = {n: t.detach().cpu().clone() for n, t in model.state_dict().items()} if base_trains else {
        **expert_state(model, "universal"),
        **{n: p.detach().cpu().clone() for n, p in model.named_parameters()
           if "embed_tokens" in n or n.startswith("lm_head")}}
    save_file(state, str(tmp / WEIGHTS))
    tok.save_pretrained(tmp)
    write_json(tmp / META, {**meta, "training": info})
    replace_dir(tmp, final)
    log.info("universal stage: %d steps in %.0f s -> %s", info["steps"], info["seconds"], final)
    return final


def run_domains(a: CDRArgs, dataset, universal_dir: Path, domains: list[str]) -> dict[str, Path]:
    from safetensors.torch import save_file

    universal_hash = file_hash(universal_dir / WEIGHTS)
    out = {}
    for d in domains:
        cdr = load_universal(universal_dir)
        check(d in cdr.meta["domains"], "domains", f"{d!r} is not a domain the universal model was trained on "
              f"({cdr.meta['domains']})")
        torch.manual_seed(a.seed)
        add_domain_adapters(cdr.model, 1, a.domain_rank, a.domain_alpha)
        for n, p in cdr.model.named_parameters():
            p.requires_grad_(".domain_a." in n or ".domain_b." in n)
        params = [(n, p) for n, p in cdr.model.named_parameters() if p.requires_grad]
        seqs = [(x, y, 0) for x, y, _ in packed_by_domain(dataset, cdr.artifact, cdr.tokenizer, a.train_splits, [d],
                                                         a.history_len, a.seed)]
        final = Path(a.output_dir) / "domains" / d
        tmp = fresh_tmp(final)
        info = train_loop(cdr.model, params, seqs, epochs=a.domain_epochs, a=a, lr=a.domain_learning_rate,
                          out_dir=tmp, desc=f"domain LoRA {d}", route_domains=True)
        save_file(expert_state(cdr.model, "domain:0"), str(tmp / "adapter.safetensors"))
        write_json(tmp / META, {"format": FORMAT, "stage": "domain", "domain": d, "rank": a.domain_rank,
                                "alpha": a.domain_alpha, "universal_dir": str(universal_dir),
                                "universal_hash": universal_hash, "sid_dir": cdr.meta["sid_dir"],
                                "sid_hash": cdr.meta["sid_hash"], "model": cdr.meta["model"],
                                "dataset_hash": dataset.dataset_hash, "train_splits": list(a.train_splits),
                                "seed": a.seed, "training": info, "command": " ".join(sys.orig_argv)})
        replace_dir(tmp, final)
        out[d] = final
    return out


@torch.no_grad()
def router_features(cdr: CDRModel, catalogue, rows: list[dict], batch_size: int = 64, show_progress: bool = True):
    """Per window: the universal path's prompt representation h [n, H], the domain slot [n], and the trie-renormalised
    log-probs of each target token under the universal path and the domain path ([n, L] each)."""
    from decoding.recommend import encode_prompts, history_prompts

    model, tok = cdr.model, cdr.tokenizer
    trie = catalogue.trie(tok)
    tables = trie.tables("cpu")
    hs, lus, lds, slots = [], [], [], []
    for s in tqdm(range(0, len(rows), batch_size), desc="router features", disable=not show_progress):
        batch = rows[s:s + batch_size]
        ids, mask = encode_prompts(tok, history_prompts(tok, catalogue, [r["history"] for r in batch],
                                                        cdr.meta["history_len"]))
        target = torch.tensor([tok.convert_tokens_to_ids(catalogue.sid_tokens(r["target"])) for r in batch])
        full_ids = torch.cat([ids, target], 1)
        full_mask = torch.cat([mask, torch.ones_like(target)], 1)
        position = (full_mask.cumsum(-1) - 1).clamp(min=0)
        slot = cdr.domain_index([r["domain"] for r in batch])
        roots = torch.tensor([trie.root(r["domain"]) for r in batch])
        per_path = []
        for domains in (None, slot):
            with routed(model, universal=True, domains=domains):
                out = model(input_ids=full_ids, attention_mask=full_mask, position_ids=position,
                            output_hidden_states=domains is None)
            if domains is None:
                hs.append(out.hidden_states[-1][:, ids.shape[1] - 1].float())
            logp = F.log_softmax(out.logits[:, ids.shape[1] - 1:-1].float(), dim=-1)  # [b, L, V]
            per_path.append(constrained_token_logp(tables, roots, logp, target))
        lus.append(per_path[0])
        lds.append(per_path[1])
        slots.append(slot)
    return torch.cat(hs), torch.cat(slots), torch.cat(lus), torch.cat(lds)


def constrained_token_logp(tables, roots: torch.Tensor, logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log P(target token | prefix) renormalised over the trie's allowed tokens at each level: [b, L]."""
    node = roots.clone()
    out = []
    for level in range(target.shape[1]):
        cols = tables.vocab[level]
        allowed = tables.allowed_codes(level, node)  # [b, W]
        lognorm = torch.logsumexp(logp[:, level, cols].masked_fill(~allowed, float("-inf")), dim=-1)
        out.append(logp[:, level].gather(1, target[:, level:level + 1]).squeeze(1) - lognorm)
        node = tables.child(level, node, target[:, level])
    return torch.stack(out, 1)


def mixture_nll(alpha: torch.Tensor, lu: torch.Tensor, ld: torch.Tensor) -> torch.Tensor:
    """−log Π_l (α P_u(t_l) + (1 − α) P_d(t_l)) per window [n]; α [n], lu / ld [n, L] (log-probs)."""
    a = alpha.clamp(1e-6, 1 - 1e-6).unsqueeze(1)
    return -torch.logaddexp(a.log() + lu, (1 - a).log() + ld).sum(1)


def run_router(a: CDRArgs, dataset, universal_dir: Path, adapters: dict[str, Path]) -> Path:
    from safetensors.torch import save_file

    started = time.perf_counter()
    cdr = load_cdr(universal_dir, adapters)
    pool = [r for s in a.train_splits for r in dataset.splits[s] if r["domain"] in cdr.domains]
    rows = random.Random(a.seed).sample(pool, min(a.router_rows, len(pool)))
    h, slot, lu, ld = router_features(cdr, cdr.catalogue(dataset), rows, show_progress=a.show_progress)
    torch.manual_seed(a.seed)
    router = UserRouter(h.shape[1], len(cdr.domains), a.router_hidden, a.router_latent)
    opt = torch.optim.Adam(router.parameters(), lr=a.router_lr)
    final = Path(a.output_dir) / "router"
    tmp = fresh_tmp(final)
    gen = torch.Generator().manual_seed(a.seed)
    with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as logf:
        router.train()
        for step in tqdm(range(1, a.router_steps + 1), desc="router", disable=not a.show_progress):
            idx = torch.randint(len(rows), (min(a.router_batch_size, len(rows)),), generator=gen)
            alpha, kl = router(h[idx], slot[idx])
            nll = mixture_nll(alpha, lu[idx], ld[idx]).mean()
            loss = nll + a.router_beta * kl.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % a.logging_steps == 0 or step == a.router_steps:
                logf.write(json.dumps({"step": step, "loss": float(loss), "nll": float(nll), "kl": float(kl.mean()),
                                       "alpha": float(alpha.mean())}) + "\n")
    router.eval()
    with torch.no_grad():
        alpha, _ = router(h, slot)
        fixed = {str(v): float(mixture_nll(torch.full_like(alpha, v), lu, ld).mean()) for v in (0.0, 0.5, 1.0)}
        learned = float(mixture_nll(alpha, lu, ld).mean())
    alpha_by_domain = {d: float(alpha[slot == i].mean()) for i, d in enumerate(cdr.domains)}
    log.info("router: mean alpha %s; training-window NLL %.4f (alpha 0: %.4f, 0.5: %.4f, 1: %.4f)",
             alpha_by_domain, learned, fixed["0.0"], fixed["0.5"], fixed["1.0"])
    save_file({k: v.contiguous() for k, v in router.state_dict().items()}, str(tmp / "router.safetensors"))
    write_json(tmp / META, {
        "format": FORMAT, "stage": "router", "hidden": a.router_hidden, "latent": a.router_latent,
        "beta": a.router_beta, "domains": cdr.domains, "universal_dir": str(universal_dir),
        "universal_hash": file_hash(universal_dir / WEIGHTS),
        "adapters": {n: file_hash(Path(p) / "adapter.safetensors") for n, p in sorted(adapters.items())},
        "rows": len(rows), "training": {"seconds": round(time.perf_counter() - started, 1), "steps": a.router_steps},
        "alpha_mean": alpha_by_domain, "nll": {"learned": learned, **{f"alpha_{k}": v for k, v
                                                                                         in fixed.items()}},
        "seed": a.seed, "command": " ".join(sys.orig_argv)})
    replace_dir(tmp, final)
    return final


def run(a: CDRArgs) -> dict[str, object]:
    """Run the configured stages; returns ``{"universal": dir, "domains": {name: dir}, "router": dir}``."""
    from tokenization.artifact import load_sid_artifact

    check_args(a)
    torch.set_num_threads(a.threads)
    check_output_dir(a.output_dir, "output_dir")
    dataset = load_rec_dataset(require_dir(a.dataset_dir, "dataset_dir"))
    have = sorted(set(dataset.items["domain"]))
    domains = list(a.domains) or have
    unknown = [d for d in domains if d not in have]
    check(not unknown, "domains", f"{unknown} not in the dataset (it has {have})")
    for s in a.train_splits:
        check(s in dataset.splits, "train_splits", f"{s!r} is not a split of {a.dataset_dir}")
    out: dict[str, object] = {}
    if "universal" in a.stages:
        artifact = load_sid_artifact(require_dir(a.sid_dir, "sid_dir"))
        missing = [i for i, d in zip(dataset.item_ids, dataset.items["domain"]) if d in domains
                   and i not in set(artifact.item_ids)]
        if missing:
            raise UserError(f"{a.sid_dir}: {len(missing)} items of the dataset have no SID (e.g. {missing[0]!r}); it "
                            "was built for other data")
        universal = run_universal(a, dataset, artifact, domains)
    else:
        universal = require_dir(a.universal_dir, "universal_dir", containing=META)
        u_meta = read_json_file(universal / META, "GenCDR universal meta")
        check(u_meta.get("stage") == "universal", str(universal / META), f"stage is {u_meta.get('stage')!r}, not "
              "'universal': universal_dir is the `universal` directory of a GenCDR run")
        check(u_meta.get("dataset_hash") == dataset.dataset_hash, str(universal), "trained on another dataset than "
              f"{a.dataset_dir}")
    out["universal"] = universal
    if "domains" in a.stages:
        out["domains"] = run_domains(a, dataset, universal, domains)
    if "router" in a.stages:
        adapters = out.get("domains") or {p.name: p for p in sorted((universal.parent / "domains").glob("*"))
                                          if (p / META).is_file()}
        check(adapters, "stages", f"no domain adapters beside {universal} for the router to mix")
        out["router"] = run_router(a, dataset, universal, adapters)
    return out


def _main(argv: list[str]) -> None:
    (a,) = parse_config((CDRArgs,), argv)
    out = run(a)
    print(json.dumps({k: (str(v) if not isinstance(v, dict) else {n: str(p) for n, p in v.items()})
                      for k, v in out.items()}, indent=1))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
