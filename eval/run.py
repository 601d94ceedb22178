"""Evaluate every configured method on the same rows; write metrics.json, report.md and plots.

    python -m eval.run --config configs/eval/amazon18.yaml [--methods popularity sasrec ...] [--split valid ...]

Methods are named in the config and built by :data:`METHODS` (name -> constructor). Another model plugs in either
as a new entry there (an object with ``name``, ``fit``, ``recommend``; see eval/recommenders.py) or, without any
code here, as a predictions JSONL file: ``methods: [predictions]`` + ``predictions_files: [name=path.jsonl]``.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from data_builders.cli import (UserError, check, check_choice, check_output_dir, check_range, check_seed, parse_config,
                               read_json_file, require_dir, require_file, run_cli)
from data_builders.dataset import SPLITS, library_versions, load_rec_dataset, write_json
from eval import evaluate as E
from eval.published import dataset_notes, published_sources, published_table
from eval.recommenders import (CandidateRule, Catalogue, PopularityRecommender, PredictionsRecommender, Recommender,
                               item_target_counts)
from eval.report import FORMAT, load_metrics, protocol_tag, write_report
from eval.slices import slice_masks, training_items

log = logging.getLogger("eval.run")


@dataclass
class EvalArgs:
    """Every setting of an evaluation run (flat YAML keys, overridable on the command line)."""

    dataset: str = ""  # required: a data_builders.build dataset/ directory
    embeddings: str = ""  # that dataset's embeddings/ directory; "" = none (methods that need them are refused)
    output_dir: str = ""  # required
    split: str = "test"  # the rows evaluated
    max_rows: int = 0  # 0 = every row of the split; N = a seeded sample of N rows (for slow methods)
    train_splits: list[str] = field(default_factory=lambda: ["train", "valid"])  # rows the methods are fitted on
    methods: list[str] = field(default_factory=lambda: ["popularity", "sasrec", "sasrec_semantic", "stars"])
    predictions_files: list[str] = field(default_factory=list)  # method `predictions`: "name=path.jsonl" or path
    include_metrics: list[str] = field(default_factory=list)  # other runs' metrics.json (same dataset and rows)
    include_methods: list[str] = field(default_factory=list)  # only these methods of include_metrics ([] = all)
    cross_domain_results: str = ""  # benchmarks/cross_domain_bench.py's JSON: the report's cross-domain section
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 20])
    history_len: int = 0  # newest history items every sequence model sees; 0 = the dataset's max_history
    same_domain: bool = True  # rank within the row's domain, as the published per-domain models do
    exclude_history: bool = False  # never recommend an item already in the history
    seed: int = 0  # model seeds and the tie-break order
    threads: int = 1  # torch CPU threads: these models are small, and on shared cores extra threads spin-wait
    batch_size: int = 512  # rows per recommend() call
    latency_rows: int = 200  # rows timed one by one for per-user latency
    cold_max: int = 2  # cold-start target: seen at most this often as a training target
    head_share: float = 0.2  # head items: this share of the catalogue, most frequent first
    short_history_max: int = 3  # short history: at most this many items
    # SASRec (method `sasrec`; `sasrec_semantic` shares these and overrides init/positions/norm/mlp below).
    sasrec_dim: int = 64
    sasrec_layers: int = 2
    sasrec_heads: int = 2
    sasrec_dropout: float = 0.2
    sasrec_epochs: int = 20
    sasrec_batch_size: int = 256
    sasrec_lr: float = 1.0e-3
    sasrec_weight_decay: float = 0.0
    sasrec_loss: str = "full"  # full | sampled
    sasrec_negatives: int = 256  # sampled softmax only
    sasrec_time_budget_minutes: float = 0.0  # > 0: stop after the epoch that passes it (also sasrec_semantic)
    sasrec_loss_positions: str = "all"  # all | last
    sasrec_positions: str = "learned"  # learned | rope
    sasrec_norm: str = "layernorm"  # layernorm | rmsnorm
    semantic_positions: str = "rope"  # seed 003: semantic init + RoPE + RMSNorm + SiLU-gated MLP
    semantic_norm: str = "rmsnorm"
    semantic_mlp: str = "silu_gated"
    semantic_freeze_epochs: int = 2  # stage 1: item vectors frozen at their text PCA
    semantic_epochs: int = 8  # it starts from better item vectors and peaks earlier on valid
    # STARS (method `stars`).
    stars_dim: int = 64
    stars_layers: int = 2
    stars_heads: int = 2
    stars_dropout: float = 0.2
    stars_epochs: int = 20
    stars_batch_size: int = 256
    stars_lr: float = 1.0e-3
    stars_weight_decay: float = 0.0
    stars_tags: bool = True
    stars_user_token: bool = True
    stars_pop_prior: bool = True
    stars_time_budget_minutes: float = 0.0  # > 0: stop after the epoch that passes it
    # Generative model (method `generative`, eval/models/generative.py): an SFT/RL checkpoint decoded with the trie.
    generative_checkpoint: str = ""
    # The same model after RL (method `generative_rl`, an rl/grpo.py or rl/dpo.py output): decoded the same way, so
    # the report has the SFT row and the SFT+RL row on the same rows.
    generative_rl_checkpoint: str = ""
    generative_num_beams: int = 0  # 0 = the checkpoint's default
    # "" = the SIDs the checkpoint trained with; else a newer version of them with items added since training
    # (python -m tokenization.add_items): the model decodes over the larger catalogue (`generative`, `generative_rl`)
    generative_sid_dir: str = ""
    # Method `generative_cold` (eval/models/cold_start.py): the items generative_sid_dir adds, merged with the beams by
    # log P(first p SID levels) + c; several values give one row per (p, c) (choose on valid)
    cold_prefix_levels: list[int] = field(default_factory=lambda: [3])
    cold_offsets: list[float] = field(default_factory=lambda: [-2.0])
    generative_batch_size: int = 16
    # Generative candidates re-ranked (method `generative_rerank`, eval/models/hybrid.py): the top rerank_candidates items
    # of the beam search, fused w * z(log-prob) + (1 - w) * z(scorer score); several weights = one row per weight.
    rerank_scorer: str = "sasrec_semantic"  # sasrec | sasrec_semantic | stars | mini_xpert (their settings above)
    rerank_candidates: int = 50
    # > 0: the scorer's own top M join the beams (LIGER's union), scored by the generative model teacher-forced
    rerank_scorer_candidates: int = 0
    rerank_weights: list[float] = field(default_factory=lambda: [0.5])  # w in [0, 1]; w = 1: generative only
    # Dense retrieval (methods random, bm25, bi_encoder, bi_encoder_title, xpert, mini_xpert; eval/dense/).
    dense_text: str = "meta"  # item text of xpert / mini_xpert: meta (the embeddings artifact) | title
    dense_dim: int = 0  # the model's d; 0 = the item embeddings' d (set it to assert the artifact's dimension)
    dense_history_len: int = 0  # L: newest history items the dense query sees; 0 = history_len
    dense_query: str = "mean"  # bi-encoder query: mean | last history item vector
    dense_pooling: str = "lstm"  # mini_xpert h_u: lstm | mean
    dense_seed_vector: str = "last"  # mini_xpert v_seed: last | mean history item
    dense_xpert_seed_vector: str = "mean"  # xpert v_seed: mean (the seed's XPERT) | last (like-for-like with mini)
    dense_rank: int = 32  # mini_xpert r: 2dr personalisation parameters per user
    dense_hidden: int = 256  # mini_xpert h_u size (LSTM hidden)
    dense_xpert_hidden: int = 256  # xpert h_u size; its hypernetwork has d² × this weights
    dense_epochs: int = 10
    dense_xpert_epochs: int = 10
    dense_batch_size: int = 64
    dense_lr: float = 1.0e-3
    dense_tau: float = 0.05
    dense_negatives: str = "in_batch"  # in_batch (seed 000) | domain (every item of the row's domain)
    dense_finetune_encoder_layers: int = 0  # > 0: also train the encoder's last layers (~0.5 h/epoch on CPU)
    dense_item_max_tokens: int = 64  # fine-tuning only: item text budget in tokens
    dense_encoder: str = "embedded:all-minilm-l6-v2"  # title embeddings and fine-tuning
    dense_index: str = "exact"  # exact (IndexFlatIP) | ivf | hnsw
    dense_ivf_nlist: int = 256
    dense_ivf_nprobe: int = 16
    dense_hnsw_m: int = 32
    dense_hnsw_ef_search: int = 64
    dense_bm25_k1: float = 1.2
    dense_bm25_b: float = 0.75
    dense_sweep: str = ""  # method mini_xpert_sweep: the dense_<name> setting varied (e.g. rank, pooling) ...
    dense_sweep_values: list[str] = field(default_factory=list)  # ... over these values: one model per value
    copy_metrics_to: str = ""  # also write metrics.json here (the main config: benchmarks/results/eval.json)


def history_kw(a: EvalArgs) -> dict:
    """``max_len`` for the sequence models: ``history_len`` once resolved (eval.run sets it from the dataset)."""
    return {"max_len": a.history_len} if a.history_len else {}


def sasrec_config(a: EvalArgs, semantic: bool):
    from eval.models.sasrec import SASRecConfig

    cfg = SASRecConfig(dim=a.sasrec_dim, layers=a.sasrec_layers, heads=a.sasrec_heads, dropout=a.sasrec_dropout,
                       positions=a.sasrec_positions, norm=a.sasrec_norm, loss=a.sasrec_loss,
                       num_negatives=a.sasrec_negatives, loss_positions=a.sasrec_loss_positions,
                       epochs=a.sasrec_epochs, batch_size=a.sasrec_batch_size, lr=a.sasrec_lr,
                       weight_decay=a.sasrec_weight_decay, time_budget_minutes=a.sasrec_time_budget_minutes,
                       seed=a.seed, **history_kw(a))
    if semantic:
        cfg = SASRecConfig(**{**asdict(cfg), "init": "semantic", "positions": a.semantic_positions,
                              "norm": a.semantic_norm, "mlp": a.semantic_mlp,
                              "freeze_item_epochs": a.semantic_freeze_epochs, "epochs": a.semantic_epochs})
    return cfg


def build_sasrec(a: EvalArgs, rule: CandidateRule, semantic: bool) -> list[Recommender]:
    from eval.models.sasrec import SASRecRecommender

    name = "sasrec_semantic" if semantic else "sasrec"
    return [SASRecRecommender(sasrec_config(a, semantic), rule, name=name, tie_seed=a.seed)]


def build_stars(a: EvalArgs, rule: CandidateRule) -> list[Recommender]:
    from eval.models.stars import STARSConfig, STARSRecommender

    cfg = STARSConfig(dim=a.stars_dim, layers=a.stars_layers, heads=a.stars_heads, dropout=a.stars_dropout,
                      tags=a.stars_tags, user_token=a.stars_user_token, pop_prior=a.stars_pop_prior,
                      epochs=a.stars_epochs, batch_size=a.stars_batch_size, lr=a.stars_lr,
                      weight_decay=a.stars_weight_decay, time_budget_minutes=a.stars_time_budget_minutes,
                      seed=a.seed, **history_kw(a))
    return [STARSRecommender(cfg, rule, tie_seed=a.seed)]


def build_predictions(a: EvalArgs, rule: CandidateRule) -> list[Recommender]:
    if not a.predictions_files:
        raise ValueError("method `predictions` needs predictions_files: [name=path.jsonl, ...]")
    out = []
    for spec in a.predictions_files:
        name, _, path = spec.rpartition("=")
        out.append(PredictionsRecommender(path, a.split, name=name))
    return out


def build_generative(a: EvalArgs, rule: CandidateRule) -> list[Recommender]:
    from eval.models.generative import GenerativeRecommender

    if not a.generative_checkpoint:
        raise ValueError("method `generative` needs generative_checkpoint (a directory written by sft/train.py)")
    return [GenerativeRecommender(a.generative_checkpoint, num_beams=a.generative_num_beams or None,
                                  batch_size=a.generative_batch_size, sid_dir=a.generative_sid_dir)]


# rerank_scorer -> the builder of that standalone method (same settings as its own row).
RERANK_SCORERS: dict[str, Callable[[EvalArgs, CandidateRule], list[Recommender]]] = {
    "sasrec": lambda a, rule: build_sasrec(a, rule, semantic=False),
    "sasrec_semantic": lambda a, rule: build_sasrec(a, rule, semantic=True),
    "stars": lambda a, rule: build_stars(a, rule),
    "mini_xpert": lambda a, rule: build_dense(a, rule, "mini_xpert"),
}


def build_generative_rl(a: EvalArgs, rule: CandidateRule) -> list[Recommender]:
    from eval.models.generative import GenerativeRecommender

    return [GenerativeRecommender(a.generative_rl_checkpoint, name="generative_rl",
                                  num_beams=a.generative_num_beams or None, batch_size=a.generative_batch_size,
                                  sid_dir=a.generative_sid_dir)]


def build_generative_cold(a: EvalArgs, rule: CandidateRule) -> list[Recommender]:
    from eval.models.cold_start import ColdStartRecommender

    check(a.generative_sid_dir, "generative_sid_dir", "method generative_cold needs the extended SID artifact "
                                                      "(python -m tokenization.add_items)")
    (generative,) = build_generative(a, rule)
    try:
        return ColdStartRecommender(generative, a.cold_prefix_levels, a.cold_offsets).rows()
    except ValueError as e:
        raise UserError(f"cold_prefix_levels / cold_offsets: {e}") from None


def build_generative_rerank(a: EvalArgs, rule: CandidateRule) -> list[Recommender]:
    from eval.models.hybrid import GenerativeRerankRecommender

    (generative,) = build_generative(a, rule)
    (scorer,) = RERANK_SCORERS[a.rerank_scorer](a, rule)  # a second instance when the method runs standalone too
    return GenerativeRerankRecommender(generative, scorer, a.rerank_weights, a.rerank_candidates,
                                       scorer_candidates=a.rerank_scorer_candidates).rows()


def check_rerank_args(a: EvalArgs) -> None:
    from eval.models.hybrid import check_weights

    check_choice("rerank_scorer", a.rerank_scorer, sorted(RERANK_SCORERS))
    try:
        check_weights(a.rerank_weights)
    except ValueError as e:
        raise UserError(f"rerank_weights: {e}") from None
    kmax = max(a.ks, default=1)
    check(a.rerank_candidates >= kmax, "rerank_candidates", f"{a.rerank_candidates} is smaller than max(ks)={kmax}: "
                                                            "the re-ranked list could not fill the top K")
    check(a.rerank_scorer_candidates >= 0, "rerank_scorer_candidates",
          f"{a.rerank_scorer_candidates}: 0 (beams only) or how many of the scorer's own top items join the beams")


def dense_config(a: EvalArgs, method: str):
    from eval.dense.index import IndexConfig
    from eval.dense.recommenders import DenseConfig
    from eval.dense.towers import TowerConfig
    from eval.dense.training import DenseTrainConfig

    xpert = method == "xpert"
    tower = {"bi_encoder": None, "bi_encoder_title": None,
             "xpert": TowerConfig(morph="full_rank", adapter="mean", hidden=a.dense_xpert_hidden,
                                  seed_vector=a.dense_xpert_seed_vector),
             "mini_xpert": TowerConfig(morph="low_rank", rank=a.dense_rank, adapter=a.dense_pooling,
                                       hidden=a.dense_hidden, seed_vector=a.dense_seed_vector)}[method]
    train = DenseTrainConfig(epochs=a.dense_xpert_epochs if xpert else a.dense_epochs, batch_size=a.dense_batch_size,
                             lr=a.dense_lr, tau=a.dense_tau, negatives=a.dense_negatives, seed=a.seed)
    index = IndexConfig(kind=a.dense_index, ivf_nlist=a.dense_ivf_nlist, ivf_nprobe=a.dense_ivf_nprobe,
                        hnsw_m=a.dense_hnsw_m, hnsw_ef_search=a.dense_hnsw_ef_search, seed=a.seed)
    text = {"bi_encoder": "meta", "bi_encoder_title": "title"}.get(method, a.dense_text)
    return DenseConfig(text=text, history_len=a.dense_history_len or a.history_len or 10, query=a.dense_query,
                       dim=a.dense_dim, tower=tower, train=train, index=index, encoder=a.dense_encoder,
                       finetune_encoder_layers=a.dense_finetune_encoder_layers if tower else 0,
                       item_max_tokens=a.dense_item_max_tokens)


def build_dense(a: EvalArgs, rule: CandidateRule, method: str) -> list[Recommender]:
    from eval.dense.recommenders import BM25Recommender, DenseRecommender, RandomRecommender

    if method == "random":
        return [RandomRecommender(rule, seed=a.seed)]
    if method == "bm25":
        return [BM25Recommender(rule, k1=a.dense_bm25_k1, b=a.dense_bm25_b, tie_seed=a.seed)]
    if method == "mini_xpert_sweep":
        return [DenseRecommender(dense_config(b, "mini_xpert"), rule, name=f"mini_xpert[{a.dense_sweep}={v}]",
                                 tie_seed=a.seed) for v, b in sweep_args(a)]
    return [DenseRecommender(dense_config(a, method), rule, name=method, tie_seed=a.seed)]


def sweep_args(a: EvalArgs) -> list[tuple[str, EvalArgs]]:
    """``(value, args with dense_<sweep> = value)`` for each value of the ablation sweep."""
    key = f"dense_{a.dense_sweep}"
    if not a.dense_sweep or not hasattr(a, key) or not a.dense_sweep_values:
        raise UserError(f"dense_sweep: method mini_xpert_sweep needs dense_sweep (a dense_* setting, e.g. rank) and "
                         f"dense_sweep_values; got dense_sweep={a.dense_sweep!r}, values {a.dense_sweep_values}")
    kind = type(getattr(a, key))
    cast = (lambda v: str(v).lower() in ("true", "1")) if kind is bool else kind  # noqa: E731
    return [(str(v), replace(a, **{key: cast(v)})) for v in a.dense_sweep_values]


# name in the config -> constructor(args, rule) returning the recommenders it stands for.
METHODS: dict[str, Callable[[EvalArgs, CandidateRule], list[Recommender]]] = {
    "popularity": lambda a, rule: [PopularityRecommender(rule, tie_seed=a.seed)],
    "sasrec": lambda a, rule: build_sasrec(a, rule, semantic=False),
    "sasrec_semantic": lambda a, rule: build_sasrec(a, rule, semantic=True),
    "stars": build_stars,
    "predictions": build_predictions,
    "generative": build_generative,
    "generative_rl": build_generative_rl,
    "generative_rerank": build_generative_rerank,
    "generative_cold": build_generative_cold,
    **{m: (lambda a, rule, m=m: build_dense(a, rule, m))
       for m in ("random", "bm25", "bi_encoder", "bi_encoder_title", "xpert", "mini_xpert", "mini_xpert_sweep")},
}
NEEDS_EMBEDDINGS = {"sasrec_semantic", "stars", "bi_encoder"}  # (xpert / mini_xpert too with dense_text: meta)


def check_args(a: EvalArgs) -> None:
    """Every constraint that can be checked before anything is fitted (a late failure would waste the run)."""
    check(a.dataset, "dataset", "is required: a dataset/ directory written by data_builders.build")
    check(a.output_dir, "output_dir", "is required: where metrics.json and report.md go")
    unknown = [m for m in a.methods if m not in METHODS]
    check(not unknown, "methods", f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    check(a.methods, "methods", "is empty; name at least one method")
    for s in [a.split, *a.train_splits]:
        check_choice("split" if s == a.split else "train_splits", s, SPLITS)
    check(a.split not in a.train_splits, "train_splits",
          f"split {a.split!r} is both evaluated and trained on (train_splits={a.train_splits})")
    later = SPLITS[SPLITS.index(a.split) + 1:]
    check(not any(s in later for s in a.train_splits), "train_splits",
          f"{a.train_splits} contains rows after the evaluated split {a.split!r}")
    check(a.train_splits, "train_splits", "is empty")
    check(a.ks, "ks", "is empty; give at least one K (e.g. [5, 10])")
    check(all(k >= 1 for k in a.ks), "ks", f"every K must be >= 1, got {a.ks}")
    check(len(set(a.ks)) == len(a.ks), "ks", f"has duplicates: {a.ks}")
    check_range("max_rows", a.max_rows, 0)
    check_range("history_len", a.history_len, 0)
    check_range("dense_history_len", a.dense_history_len, 0)
    for name in ("batch_size", "threads", "generative_batch_size", "sasrec_dim", "sasrec_layers", "sasrec_heads",
                 "sasrec_epochs", "sasrec_batch_size", "stars_dim", "stars_layers", "stars_heads", "stars_epochs",
                 "stars_batch_size", "dense_epochs", "dense_xpert_epochs", "dense_batch_size", "dense_rank",
                 "dense_hidden", "dense_xpert_hidden"):
        check_range(name, getattr(a, name), 1)
    for name in ("latency_rows", "cold_max", "semantic_epochs", "semantic_freeze_epochs", "generative_num_beams"):
        check_range(name, getattr(a, name), 0)
    for name in ("sasrec_time_budget_minutes", "stars_time_budget_minutes"):
        check_range(name, getattr(a, name), 0)
    for name in ("sasrec_lr", "stars_lr", "dense_lr", "dense_tau"):
        check_range(name, getattr(a, name), 0, lo_open=True)
    for name in ("sasrec_dropout", "stars_dropout"):
        check_range(name, getattr(a, name), 0, 1, hi_open=True)
    check_range("head_share", a.head_share, 0, 1, lo_open=True, hi_open=True)
    check_seed("seed", a.seed)
    check_dense_args(a)
    kmax = max(a.ks)
    check_range("short_history_max", a.short_history_max, 0)
    # (generative_rerank decodes rerank_candidates beams)
    if a.generative_num_beams and {"generative", "generative_rl"} & set(a.methods):
        check(a.generative_num_beams >= kmax, "generative_num_beams",
              f"{a.generative_num_beams} beams cannot fill a top-{kmax} list (max of ks); set it >= {kmax} or 0")
    users = [m for m in needs_embeddings(a) if m != "generative_rerank"]
    check(a.embeddings or not users, "embeddings",
          f"methods {users} need item embeddings: set `embeddings:` to this dataset's data_builders.build "
          "embeddings/ directory, or leave these methods out (a dataset without item text has none; README: Your "
          "own data)")
    check(a.embeddings or "generative_rerank" not in needs_embeddings(a), "embeddings",
          f"generative_rerank with rerank_scorer {a.rerank_scorer!r} needs it (or choose a scorer without text)")
    if "mini_xpert_sweep" in a.methods:
        sweep_args(a)
    if "predictions" in a.methods:
        names = [spec.rpartition("=")[0] or Path(spec).stem for spec in a.predictions_files]
        check(len(set(names)) == len(names), "predictions_files", f"two files share a method name ({names}); "
                                                                 "name them: name=path.jsonl")
        check(a.predictions_files, "predictions_files", "method `predictions` needs predictions_files: "
                                                        "[name=path.jsonl, ...]")
    if {"generative", "generative_rerank", "generative_cold"} & set(a.methods):
        check(a.generative_checkpoint, "generative_checkpoint",
              "methods generative / generative_rerank / generative_cold need a checkpoint directory written by "
              "sft/train.py")
    if "generative_cold" in a.methods:
        check(a.generative_sid_dir, "generative_sid_dir", "method generative_cold needs the extended SID artifact "
                                                          "(python -m tokenization.add_items)")
    if "generative_rl" in a.methods:
        check(a.generative_rl_checkpoint, "generative_rl_checkpoint",
              "method generative_rl needs a checkpoint directory written by rl/grpo.py or rl/dpo.py")
    if "generative_rerank" in a.methods:
        check_rerank_args(a)


def check_dense_args(a: EvalArgs) -> None:
    """The dense methods' settings, named by their config keys, then their configs built (eval/dense validates
    the rest) — all before anything is fitted."""
    for key, allowed in (("dense_text", ("meta", "title")), ("dense_query", ("last", "mean")),
                         ("dense_pooling", ("lstm", "mean")), ("dense_seed_vector", ("last", "mean")),
                         ("dense_xpert_seed_vector", ("last", "mean")), ("dense_negatives", ("in_batch", "domain")),
                         ("dense_index", ("exact", "ivf", "hnsw"))):
        check_choice(key, getattr(a, key), allowed)
    for method in {"bi_encoder", "bi_encoder_title", "xpert", "mini_xpert"} & set(a.methods):
        dense_config(a, method)
    if "mini_xpert_sweep" in a.methods:
        for _, b in sweep_args(a):
            dense_config(b, "mini_xpert")


def check_dense_dims(a: EvalArgs, embeddings) -> None:
    """The morph models' d (``dense_dim``) and rank against the metadata embeddings' d, before anything is fitted."""
    models = {"xpert", "mini_xpert", "mini_xpert_sweep"} & set(a.methods)
    if embeddings is None or a.dense_text != "meta" or a.dense_finetune_encoder_layers or not models:
        return
    d = int(embeddings.shape[1])
    check(not a.dense_dim or a.dense_dim == d, "dense_dim", f"{a.dense_dim}, but the item embeddings have d = {d}")
    configs = [b for _, b in sweep_args(a)] if "mini_xpert_sweep" in models else []
    for b in configs + ([a] if "mini_xpert" in models else []):
        check(b.dense_rank <= d, "dense_rank", f"r = {b.dense_rank} is larger than the item embeddings' d = {d}")


def check_inputs(a: EvalArgs) -> None:
    """Every input path exists (before anything loads or fits); their contents are checked as they load."""
    require_dir(a.dataset, "dataset", containing="meta.json")
    if a.embeddings:
        require_dir(a.embeddings, "embeddings", containing="meta.json")
    if {"generative", "generative_rerank", "generative_cold"} & set(a.methods):
        require_dir(a.generative_checkpoint, "generative_checkpoint", containing="genrec_sft.json")
    if "generative_rl" in a.methods:
        require_dir(a.generative_rl_checkpoint, "generative_rl_checkpoint", containing="genrec_sft.json")
    if a.generative_sid_dir:
        require_dir(a.generative_sid_dir, "generative_sid_dir", containing="meta.json")
    for spec in a.predictions_files if "predictions" in a.methods else []:
        require_file(spec.rpartition("=")[2], "predictions file")
    for path in a.include_metrics:
        require_file(path, "include_metrics file")
    if a.cross_domain_results:
        require_file(a.cross_domain_results, "cross_domain_results")
    check_output_dir(a.output_dir)


def needs_embeddings(a: EvalArgs) -> list[str]:
    """The configured methods that read the item embeddings."""
    needs = NEEDS_EMBEDDINGS | ({"xpert", "mini_xpert", "mini_xpert_sweep"} if a.dense_text == "meta" and
                                 not a.dense_finetune_encoder_layers else set())
    if "generative_rerank" in a.methods and a.rerank_scorer in needs:
        needs = needs | {"generative_rerank"}
    return sorted(needs & set(a.methods))


def load_embeddings(a: EvalArgs, dataset):
    """The item embeddings of ``a.embeddings`` (None if not set); they must have been built from ``dataset``."""
    if not a.embeddings:
        return None
    from data_builders.dataset import DataError
    from data_builders.embeddings import load_item_embeddings

    try:
        embeddings, _ = load_item_embeddings(a.embeddings, dataset=dataset)
    except DataError as e:
        users = needs_embeddings(a)
        why = f" (used by {users})" if users else " (no configured method uses them: set `embeddings: \"\"`)"
        raise UserError(f"embeddings{why}: {e}") from None
    return embeddings


def check_checkpoint(a: EvalArgs, dataset, rows: "E.EvalRows", rule: CandidateRule) -> None:
    """The generative checkpoint(s) belong to this dataset, their SID artifact is there, and the beams can fill every
    list (before anything is fitted)."""
    if "generative_rl" in a.methods:
        _check_one_checkpoint(a, dataset, "generative_rl_checkpoint", a.generative_rl_checkpoint)
    if {"generative", "generative_rerank", "generative_cold"} & set(a.methods):
        _check_one_checkpoint(a, dataset, "generative_checkpoint", a.generative_checkpoint)
    if a.generative_num_beams and {"generative", "generative_rl"} & set(a.methods):
        catalogue = Catalogue.from_dataset(dataset, a.seed)
        need = E.request_size(a.ks, rule, max((len(q.history) for q in rows.queries), default=0))
        sizes = Counter(catalogue.domain_of.values())
        need = min(need, min(sizes[d] for d in {q.domain for q in rows.queries}))
        check(a.generative_num_beams >= need, "generative_num_beams",
              f"{a.generative_num_beams} beams cannot fill the {need} items asked per row (max(ks) plus the "
              "history items exclude_history drops); set it higher or 0 (= as many as asked)")


def _check_one_checkpoint(a: EvalArgs, dataset, where: str, path: str) -> None:
    meta = read_json_file(Path(path) / "genrec_sft.json", "SFT checkpoint meta")
    check(isinstance(meta, dict), where, f"{path}/genrec_sft.json is not a JSON object")
    trained_on = meta.get("dataset_hash")
    check(trained_on in (None, dataset.dataset_hash), where,
          f"{path} was trained on dataset {str(trained_on)[:12]}, but `dataset` {a.dataset} is "
          f"{dataset.dataset_hash[:12]}; evaluate it on the dataset it was trained on")
    if meta.get("sid_dir"):
        sid_dir = require_dir(meta["sid_dir"], f"SID artifact of {path} (sid_dir in genrec_sft.json)",
                              containing="meta.json")
        sid_meta = read_json_file(sid_dir / "meta.json", "SID artifact meta")
        built_from = (sid_meta.get("inputs") or {}).get("dataset_hash") if isinstance(sid_meta, dict) else None
        check(built_from in (None, dataset.dataset_hash), where,
              f"its SID artifact {sid_dir} was built from dataset {str(built_from)[:12]}, but `dataset` "
              f"{a.dataset} is {dataset.dataset_hash[:12]}")


def history_seen(rec) -> str:
    """Which history a method saw: the newest N items, all of them, none (not personalised) or unknown."""
    if hasattr(rec, "parent"):  # a weight row of a re-ranking sweep
        rec = rec.parent
    if hasattr(rec, "generative") and hasattr(rec, "scorer"):
        return f"{history_seen(rec.generative)} (generative), {history_seen(rec.scorer)} (scorer)"
    if isinstance(rec, PredictionsRecommender):
        return "unknown (precomputed)"
    cfg = getattr(rec, "cfg", None)
    n = getattr(cfg, "max_len", None) or getattr(cfg, "history_len", None) or getattr(rec, "history_len", None)
    if isinstance(n, int) and n > 0:
        return f"newest {n}"
    if type(rec).__name__ == "BM25Recommender":
        return "all"
    return "none"


def evaluate_methods(a: EvalArgs, dataset, train_rows: list[dict], embeddings, rows: E.EvalRows,
                     rule: CandidateRule, on_method: Callable[[dict], None] | None = None,
                     prebuilt: dict[str, list[Recommender]] | None = None) -> dict:
    """Fit, run, time and score every configured method. Returns the per-method parts of metrics.json;
    ``on_method(parts so far)`` is called after each method (eval.run saves them: a late failure loses nothing).
    ``prebuilt``: method -> recommenders already built and fitted (eval.run reads predictions files up front)."""
    prebuilt = prebuilt or {}
    catalogue = Catalogue.from_dataset(dataset, a.seed)
    E.check_ks(a.ks, catalogue, rule)
    k_request = E.request_size(a.ks, rule, max((len(q.history) for q in rows.queries), default=0))
    known = training_items(train_rows)
    slices = slice_masks(rows.targets, [q.history for q in rows.queries], item_target_counts(train_rows),
                         catalogue.item_ids, a.cold_max, a.head_share, a.short_history_max, known)
    out: dict = {"methods": {}, "per_user": {}, "slices": {}, "latency_ms": {}, "training": {},
                 "method_order": [], "slice_order": list(slices)}
    for method in a.methods:
        fitted = method in prebuilt
        for rec in prebuilt[method] if fitted else METHODS[method](a, rule):
            start = time.perf_counter()
            if not fitted:
                rec.fit(dataset, train_rows, embeddings)
            fit_seconds = time.perf_counter() - start
            lists, seconds = E.collect_lists(rec, rows, k_request, a.batch_size)
            scored = E.score_lists(lists, rows, catalogue, rule, a.ks, slices, known)
            precomputed = isinstance(rec, PredictionsRecommender)
            if rec.name in out["methods"]:
                raise ValueError(f"two methods are named {rec.name!r}; give predictions files distinct names")
            out["method_order"].append(rec.name)
            out["methods"][rec.name] = scored["by_domain"]
            out["per_user"][rec.name] = scored["per_user"]
            out["slices"][rec.name] = scored["slices"]
            shared = getattr(rec, "latency_of", None)  # a sweep row serves another row's decode: its latency
            out["latency_ms"][rec.name] = (None if precomputed else out["latency_ms"][shared]
                                           if shared in out["latency_ms"] else
                                           E.measure_latency(rec, rows, k_request, a.latency_rows, a.seed))
            out["training"][rec.name] = {**getattr(rec, "train_log", {}), "seconds": round(fit_seconds, 2),
                                         "recommend_seconds": round(seconds, 2), "history": history_seen(rec)}
            kref, top = E.reference_k(a.ks), scored["by_domain"]["all"]
            log.info("%s: HR@%d %.4f NDCG@%d %.4f (fit %.0f s, recommend %.1f s)", rec.name, kref,
                     top[f"hr@{kref}"], kref, top[f"ndcg@{kref}"], fit_seconds, seconds)
            if on_method is not None:
                on_method(out)
    return out


def merge_included(metrics: dict, paths: list[str], only: list[str] | None = None) -> None:
    """Add the methods (all, or those in ``only``: each must be in one of the files) of other runs' metrics files;
    they must have scored the same rows (same dataset, split and row sample), else an error."""
    others = {path: load_metrics(path, metrics["dataset_hash"], metrics["split"]) for path in paths}
    found = {n for other in others.values() for n in other.get("method_order") or other["methods"]}
    missing = sorted(set(only or []) - found)
    if missing:
        raise UserError(f"{', '.join(paths)}: has no methods {missing} (it has {sorted(found)})")
    for path, other in others.items():
        if row_sample(other) != row_sample(metrics):
            raise UserError(f"{path}: scored {row_sample(other)} (rows, max_rows, seed), this run "
                             f"{row_sample(metrics)}; only metrics of the same rows can share a table")
        names = other.get("method_order") or list(other["methods"])
        # Rows trained under another protocol (other train_splits) carry it in their name: never an unlabelled mix.
        splits = list(other.get("train_splits") or [])
        tag = "" if splits == list(metrics["train_splits"]) else f" [{protocol_tag(splits)}]"
        for name in [n for n in names if not only or n in only]:
            new = name + tag if name + tag not in metrics["methods"] else f"{name}{tag} ({path})"
            if tag:
                metrics.setdefault("other_protocols", {})[new] = splits
            for part in ("methods", "per_user", "slices", "latency_ms", "training"):
                metrics[part][new] = other.get(part, {}).get(name)
            metrics["method_order"].append(new)


def load_cross_domain(path: str, dataset_hash: str, split: str) -> dict:
    """The cross-domain benchmark's JSON, checked to be of this dataset and split (it is shown beside this run)."""
    data = read_json_file(Path(path), "cross_domain_results")
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        raise UserError(f"{path}: not a benchmarks/cross_domain_bench.py result (no `variants`)")
    if data.get("dataset_hash") not in (None, dataset_hash):
        raise UserError(f"{path}: measured on dataset {str(data['dataset_hash'])[:12]}, this run evaluates "
                        f"{dataset_hash[:12]}; rerun benchmarks/cross_domain_bench.py on this dataset")
    if data.get("split", split) != split:
        raise UserError(f"{path}: scored the {data['split']!r} rows, this run {split!r}")
    return {**data, "path": str(path)}


def row_sample(metrics: dict) -> tuple:
    """Which rows a run scored: (rows, max_rows, seed of the sample); the seed only matters for a sample."""
    max_rows = metrics.get("config", {}).get("max_rows", 0)
    return metrics["eval_rows"], max_rows, metrics.get("seeds", {}).get("seed") if max_rows else None


def rules_text(a: EvalArgs) -> dict:
    return {
        "same_domain": a.same_domain, "exclude_history": a.exclude_history,
        "ranking": "Duplicates removed (first occurrence kept); ids outside the catalogue count as misses and keep "
                   "their rank position; score ties count against the target (it ranks after every item with its "
                   "score); one target per row, rank ρ: HR@K = 1[ρ≤K], NDCG@K = 1[ρ≤K]/log2(ρ+1), "
                   "MRR@K = 1[ρ≤K]/ρ",
        "averaging": "per row (every evaluated row weighs the same, as in the published table); per-user "
                     "averages in `per_user`",
        "latency": f"{a.latency_rows} random rows recommended one at a time (batch of 1) on this machine's CPU",
    }


def main(argv: list[str] | None = None) -> int:
    """The CLI: exit 0, or 2 with one ``error: <where>: <problem>`` line for a user error (data_builders/cli.py)."""
    return run_cli(run_eval, argv)


def resolve_history_len(a: EvalArgs, dataset) -> EvalArgs:
    """``history_len: 0`` -> the dataset's ``max_history`` (what the importer kept), else the longest history."""
    if a.history_len:
        return a
    configured = (dataset.meta.get("config") or {}).get("max_history")
    if not configured:
        configured = max((len(h) for s in dataset.splits.values() for h in s["history"]), default=1)
    return replace(a, history_len=int(configured))


def run_eval(argv: list[str] | None = None) -> dict:
    """Run the evaluation; returns the metrics dict (also written to ``output_dir/metrics.json``).

    Every check that does not need a fitted model runs first. While methods run, ``metrics.partial.json`` in
    ``output_dir`` holds every finished method's metrics (a late failure loses nothing); it is removed when
    ``metrics.json`` is written.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports every CPU-specific build it skips
    argv = list(sys.argv[1:] if argv is None else argv)
    (a,) = parse_config((EvalArgs,), argv)
    check_args(a)
    check_inputs(a)
    out = Path(a.output_dir)
    import faiss
    import torch

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    dataset = load_rec_dataset(a.dataset)
    a = resolve_history_len(replace(a, ks=sorted(a.ks)), dataset)
    embeddings = load_embeddings(a, dataset)
    check_dense_dims(a, embeddings)
    train_rows = [r for s in a.train_splits for r in dataset.splits[s].to_list()]
    rows = E.EvalRows.from_split(dataset.splits[a.split], a.max_rows, a.seed)
    rule = CandidateRule(same_domain=a.same_domain, exclude_history=a.exclude_history)
    E.check_ks(a.ks, Catalogue.from_dataset(dataset, a.seed), rule)
    if {"generative", "generative_rl", "generative_rerank", "generative_cold"} & set(a.methods):
        check_checkpoint(a, dataset, rows, rule)
    prebuilt = {}
    if "predictions" in a.methods:  # read and check every predictions file now, not after the other methods
        prebuilt["predictions"] = build_predictions(a, rule)
        for rec in prebuilt["predictions"]:
            rec.fit(dataset, train_rows, embeddings)
    log.info("%d %s rows; fitting on %s (%d rows); methods %s; history_len %d", len(rows.queries), a.split,
             a.train_splits, len(train_rows), a.methods, a.history_len)

    head = {
        "format": FORMAT, "dataset": a.dataset, "dataset_hash": dataset.dataset_hash, "split": a.split,
        "eval_rows": len(rows.queries), "split_rows": len(dataset.splits[a.split]), "train_splits": a.train_splits,
        "train_rows": len(train_rows), "ks": a.ks, "rules": rules_text(a), "history_len": a.history_len,
        "dataset_max_history": (dataset.meta.get("config") or {}).get("max_history"),
        "published": published_table(dataset.meta), "published_sources": published_sources(dataset.meta),
        "dataset_notes": dataset_notes(dataset.meta),
        "command": "python -m eval.run " + shlex.join(argv), "seeds": {"seed": a.seed},
        "dataset_command": dataset.meta.get("command", ""),
        "config": asdict(a), "versions": library_versions(),
    }
    empty = {part: {} for part in ("methods", "per_user", "slices", "latency_ms", "training")}
    merge_included({**head, **empty, "method_order": []}, a.include_metrics, a.include_methods)  # refuse them now
    if a.cross_domain_results:
        head["cross_domain"] = load_cross_domain(a.cross_domain_results, dataset.dataset_hash, a.split)
    partial = out / "metrics.partial.json"

    def save_partial(parts: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(partial, {**head, **parts, "partial": True})

    metrics = {**head, **evaluate_methods(a, dataset, train_rows, embeddings, rows, rule, on_method=save_partial,
                                          prebuilt=prebuilt)}
    merge_included(metrics, a.include_metrics, a.include_methods)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    partial.unlink(missing_ok=True)
    paths = write_report(metrics, out)
    if a.copy_metrics_to:
        Path(a.copy_metrics_to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "metrics.json", a.copy_metrics_to)
    print(paths["report"].read_text(encoding="utf-8").split("## Per-row")[0])
    print(f"wrote {out / 'metrics.json'}, {paths['report']}, {paths['hr_curve'].name}, {paths['slices'].name}")
    return metrics


if __name__ == "__main__":
    sys.exit(main())
