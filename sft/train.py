"""Fine-tune a causal LM with SID tokens to generate the next item's SID from a user's history.

    accelerate launch --config_file accelerate_config.yaml sft/train.py --config configs/sft/smollm2_lora.yaml
    python sft/train.py --config configs/tiny/sft.yaml --max_steps 2          # single process, no accelerate

Reads the dataset and the SID artifact, extends the base model's vocabulary with the SID tokens (semantic
initialisation; ``model_name_or_path: scratch`` builds a random decoder over a SID-only vocabulary instead),
builds prompt/completion examples with the shared example builder (loss on the completion only),
trains with TRL's SFTTrainer in one of the modes of sft/modeling.py, and saves the model/adapter, the tokenizer
with SID tokens, the resolved config and ``genrec_sft.json`` (base model, mode, SID artifact path + hash).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from trl import ModelConfig, SFTConfig, SFTTrainer, TrlParser

from data_builders.dataset import load_rec_dataset
from data_builders.examples import build_examples, packed_sequence_examples
from decoding.catalogue import Catalogue
from sft.callbacks import VALIDATION_METRICS, ConstrainedValidation, MetricsLog, TimeBudget, sample_rows
from sft.modeling import (
    MODES, SidRowGuard, apply_mode, count_parameters, load_base, save_sid_rows, sid_artifact_hash,
    trainable_embedding_params, upcast_trainable, write_checkpoint_meta,
)
from data_builders.cli import (UserError, check, check_choice, check_output_dir, check_range, check_seed, load_npy,
                               parse_config, require_dir, run_cli)
from sft.models import EMBEDDED_LLMS, SCRATCH_SPECS, TINY_SPECS, build_scratch_lm
from tokenization.artifact import load_sid_artifact
from tokenization.vocab import check_sid_vocabulary, extend_vocabulary

log = logging.getLogger("sft.train")


@dataclass
class ScriptArguments:
    dataset_dir: str = field(default="artifacts/amazon18/dataset", metadata={"help": "data_builders.build output"})
    sid_dir: str = field(default="artifacts/amazon18/sids", metadata={"help": "tokenization.build output"})
    mode: str = field(default="lora", metadata={"help": f"one of {MODES}"})
    num_layers: int | None = field(default=None, metadata={"help": "keep only the first N decoder layers"})
    sid_init: str = field(default="auto", metadata={"help": "SID rows: semantic | mean (pretrained bases), random | "
                                                           "centroids (scratch: the RQ codebooks); auto = semantic "
                                                           "/ random"})
    train_splits: list[str] = field(default_factory=lambda: ["train"], metadata={"help": "dataset splits to train on"})
    domains: list[str] | None = field(default=None, metadata={"help": "train on these domains only"})
    history_len: int = field(default=10, metadata={"help": "last N history items in the prompt"})
    weight_seq_sid: float = field(default=1.0, metadata={"help": "history SIDs -> next SID (rows multiplicity)"})
    weight_title2sid: float = field(default=0.0, metadata={"help": "title -> SID alignment (items multiplicity)"})
    weight_sid2title: float = field(default=0.0, metadata={"help": "SID -> title alignment"})
    weight_seq_title: float = field(default=0.0, metadata={"help": "history titles -> next SID"})
    max_train_examples: int | None = field(default=None, metadata={"help": "cap (a CPU budget), after shuffling"})
    train_sid_rows: bool = field(default=True, metadata={"help": "False: SID rows frozen (e.g. domain adapters on a "
                                                                 "merged base whose SID rows are shared)"})
    eval_examples: int = field(default=256, metadata={"help": "validation rows for the eval loss"})
    val_rec_rows: int = field(default=200, metadata={"help": "validation rows scored with constrained beam search "
                                                            "at each evaluation (0 = loss only)"})
    time_budget_minutes: float | None = field(default=None, metadata={"help": "stop after this many minutes"})
    time_budget_clock: str = field(default="wall", metadata={"help": "wall | cpu (process CPU time / threads: "
                                                                     "not eaten by other jobs on shared cores)"})
    allow_download: bool = field(default=False, metadata={"help": "let a hub id be downloaded (off: offline)"})
    val_k: int = field(default=10, metadata={"help": "items recommended per validation row (<= catalogue size)"})
    val_beams: int | None = field(default=None, metadata={"help": "beam width for that validation (None = k)"})
    resume_fresh_optimizer: bool = field(default=False, metadata={"help": "resume from a checkpoint that has no "
                                                                          "optimizer.pt (a fresh optimizer: the "
                                                                          "run will not match an unbroken one)"})
    early_stopping_patience: int = field(default=0, metadata={"help": "stop after this many evaluations without "
                                                                     "a better metric_for_best_model (0 = off)"})
    scratch_hidden_size: int = field(default=128, metadata={"help": "model_name_or_path: scratch — hidden size"})
    scratch_layers: int = field(default=4, metadata={"help": "scratch — decoder layers"})
    scratch_heads: int = field(default=4, metadata={"help": "scratch — attention heads"})
    scratch_dropout: float = field(default=0.0, metadata={"help": "scratch — dropout on embeddings and block outputs"})
    sequence_packing: bool = field(default=False, metadata={"help": "scratch — every window of a user in one "
                                                                    "sequence (same loss, ~1/3 of the tokens)"})
    item_text_embeddings: str = field(default="", metadata={"help": "scratch — an embeddings directory: add each "
                                                                    "history item's projected text vector at its "
                                                                    "<|sep|> ('' = off)"})


def check_args(script: ScriptArguments, training: SFTConfig, model_args: ModelConfig) -> None:
    """Clear errors before anything loads."""
    if script.mode not in MODES:
        raise UserError(f"mode={script.mode!r}; choose from {MODES}")
    if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:
        raise UserError("set `mode: lora | qlora` instead of use_peft / load_in_4bit / load_in_8bit")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not training.use_cpu:
        # Without use_cpu the processes do not join one gloo group: each trains alone and nothing says so.
        raise UserError("multi-process training on CPU needs `use_cpu: true` (and ddp_backend gloo)")
    if script.early_stopping_patience < 0:
        raise UserError(f"early_stopping_patience must be >= 0, got {script.early_stopping_patience}")
    if script.early_stopping_patience and not (training.load_best_model_at_end and training.metric_for_best_model
                                               and training.eval_strategy != "no"):
        raise UserError("early_stopping_patience needs eval_strategy: steps, metric_for_best_model (e.g. ndcg@10) "
                         "and load_best_model_at_end: true")
    if "test" in script.train_splits:
        raise UserError("train_splits contains `test`: the test rows are what evaluation scores (use train, valid)")
    if not model_args.model_name_or_path:
        raise UserError("model_name_or_path is required (e.g. embedded:smollm2-135m, tiny, scratch, or an HF path)")
    if model_args.model_name_or_path in SCRATCH_SPECS:
        if script.mode != "full":
            raise UserError(f"{model_args.model_name_or_path} starts from random weights: use `mode: full`")
        words = [t for t in ("title2sid", "sid2title", "seq_title") if getattr(script, f"weight_{t}") > 0]
        if words:
            raise UserError(f"{model_args.model_name_or_path} has a SID-only vocabulary: set weight_{words[0]} "
                             "(and every task but seq_sid) to 0")
    elif script.scratch_dropout or script.item_text_embeddings or script.sequence_packing:
        raise UserError("scratch_dropout / item_text_embeddings / sequence_packing apply to model_name_or_path: "
                         "scratch only")
    scratch = model_args.model_name_or_path in SCRATCH_SPECS
    spec = model_args.model_name_or_path
    if scratch and spec != "scratch" and not spec.endswith(":llama") and (script.scratch_dropout or
                                                                         script.item_text_embeddings):
        raise UserError(f"model_name_or_path: {spec}: scratch_dropout / item_text_embeddings are built on llama "
                        "(use `scratch`)")
    if spec.startswith("embedded:") and spec not in EMBEDDED_LLMS:
        raise UserError(f"model_name_or_path: unknown embedded model {spec!r}; available: {sorted(EMBEDDED_LLMS)}")
    if script.mode == "qlora":
        check(spec not in TINY_SPECS, "mode", f"qlora loads a checkpoint from disk in 4-bit; the in-process {spec!r} "
                                              "model cannot be (save it with save_pretrained and pass its directory)")
        import importlib.util

        check(importlib.util.find_spec("bitsandbytes") is not None, "mode",
              "qlora needs the bitsandbytes package (pip install 'bitsandbytes>=0.48')")
    if script.mode in ("lora", "qlora"):
        check_range("lora_r", model_args.lora_r, 1)
        check_range("lora_alpha", model_args.lora_alpha, 0, lo_open=True)
        check_range("lora_dropout", model_args.lora_dropout, 0, 1, hi_open=True)
    if script.sid_init not in (("auto", "random", "centroids") if scratch else ("auto", "semantic", "mean")):
        raise UserError(f"sid_init={script.sid_init!r}: choose semantic | mean (pretrained bases) or random | "
                         "centroids (scratch)")
    check_range("scratch_dropout", script.scratch_dropout, 0, 1, hi_open=True)
    # Flags that would not mean what they say (issue #11 items 1-2): refuse them before anything trains.
    if not script.train_sid_rows and script.mode == "new_tokens":
        raise UserError("train_sid_rows: false with mode: new_tokens would leave nothing to train (new_tokens "
                        "trains the SID rows only); use mode: lora with train_sid_rows: false for frozen SID rows")
    if not script.train_sid_rows and script.mode == "full":
        raise UserError("train_sid_rows: false with mode: full: full trains every parameter, SID rows included; "
                        "use mode: lora for frozen SID rows")
    check_range("history_len", script.history_len, 1)
    check_range("eval_examples", script.eval_examples, 1)
    check_range("val_rec_rows", script.val_rec_rows, 0)
    check_range("val_k", script.val_k, 1)
    check_range("val_beams", script.val_beams, script.val_k, allow_none=True)
    check_range("max_train_examples", script.max_train_examples, 1, allow_none=True)
    check_range("time_budget_minutes", script.time_budget_minutes, 0, lo_open=True, allow_none=True)
    check_choice("time_budget_clock", script.time_budget_clock, ("wall", "cpu"))
    check_range("num_layers", script.num_layers, 1, allow_none=True)
    for name in ("scratch_hidden_size", "scratch_layers", "scratch_heads"):
        check_range(name, getattr(script, name), 1)
    check(script.scratch_hidden_size % script.scratch_heads == 0, "scratch_hidden_size",
          f"{script.scratch_hidden_size} is not divisible by scratch_heads={script.scratch_heads}")
    weights = ("weight_seq_sid", "weight_title2sid", "weight_sid2title", "weight_seq_title")
    for name in weights:
        check_range(name, getattr(script, name), 0)
    check(script.sequence_packing or any(getattr(script, name) > 0 for name in weights), "weight_seq_sid",
          f"every task weight ({', '.join(weights)}) is 0: no training examples")
    check(script.train_splits, "train_splits", "is empty")
    for split in script.train_splits:
        check_choice("train_splits", split, ("train", "valid"))
    check_range("per_device_train_batch_size", training.per_device_train_batch_size, 1)
    check_range("per_device_eval_batch_size", training.per_device_eval_batch_size, 1)
    check_range("gradient_accumulation_steps", training.gradient_accumulation_steps, 1)
    check_range("learning_rate", training.learning_rate, 0, lo_open=True)
    check_range("weight_decay", training.weight_decay, 0)
    check_range("dataloader_num_workers", training.dataloader_num_workers, 0)
    check_range("max_length", training.max_length, 1, allow_none=True)
    check(training.max_steps != 0, "max_steps", "0 trains nothing; -1 = by num_train_epochs, or a positive count")
    check(training.max_steps >= -1, "max_steps", f"{training.max_steps}: -1 = by num_train_epochs, or a positive "
                                                 "count")
    check_range("num_train_epochs", training.num_train_epochs, 0, lo_open=True)
    check_seed("seed", training.seed)
    if training.metric_for_best_model:
        name = training.metric_for_best_model.removeprefix("eval_")
        known = {"loss", "entropy", "mean_token_accuracy", "num_tokens", "runtime", "samples_per_second",
                 "steps_per_second"} | (set(VALIDATION_METRICS) if script.val_rec_rows > 0 else set())
        check(name in known, "metric_for_best_model", f"{training.metric_for_best_model!r} is not an evaluation "
                                                      f"metric; choose from {sorted(known)}"
                                                      + ("" if script.val_rec_rows > 0 else
                                                         " (hr@K / ndcg@K need val_rec_rows > 0)"))
    if model_args.model_name_or_path not in (*SCRATCH_SPECS, *TINY_SPECS) and \
            not model_args.model_name_or_path.startswith("embedded:") and not script.allow_download:
        require_dir(model_args.model_name_or_path, "model_name_or_path (a local checkpoint; set allow_download: "
                                                   "true for a hub id)")


def check_inputs(script: ScriptArguments, training: SFTConfig) -> None:
    """Inputs exist and the output location is usable, before anything loads (contents are checked on load)."""
    require_dir(script.dataset_dir, "dataset_dir", containing="meta.json")
    require_dir(script.sid_dir, "sid_dir", containing="meta.json")
    if script.item_text_embeddings:
        require_dir(script.item_text_embeddings, "item_text_embeddings", containing="meta.json")
    if training.resume_from_checkpoint:
        require_dir(training.resume_from_checkpoint, "resume_from_checkpoint")
    check_output_dir(training.output_dir)


def check_resume(checkpoint: str, fresh_optimizer: bool) -> None:
    """A resume restores the optimizer too; without ``optimizer.pt`` the run silently diverges: refuse unless asked."""
    path = Path(checkpoint)
    check((path / "trainer_state.json").is_file(), str(path), "not a Trainer checkpoint (no trainer_state.json)")
    if not (path / "optimizer.pt").is_file():
        check(fresh_optimizer, str(path), "has no optimizer.pt: resuming would start a fresh optimizer (different "
                                          "weights than an unbroken run); set resume_fresh_optimizer: true to "
                                          "accept that")
        log.warning("%s has no optimizer.pt: resuming with a fresh optimizer (resume_fresh_optimizer: true)", path)


def check_catalogue(script: ScriptArguments, dataset, artifact) -> None:
    """The SID artifact covers the dataset's items, and val_k fits the smallest domain trained on."""
    items = set(dataset.item_ids)
    missing = [i for i in artifact.item_ids if i not in items]
    check(not missing, str(script.sid_dir), f"SID artifact names {len(missing)} items the dataset "
                                            f"{script.dataset_dir} does not have (e.g. {missing[:1]}); it was built "
                                            "for other data")
    built_from = (artifact.meta.get("inputs") or {}).get("dataset_hash")
    check(built_from in (None, dataset.dataset_hash), str(script.sid_dir),
          f"SID artifact built from dataset {str(built_from)[:12]}, but dataset_dir {script.dataset_dir} is "
          f"{dataset.dataset_hash[:12]}; rebuild the SIDs for this dataset (python -m tokenization.build)")
    from collections import Counter

    sizes = Counter(dataset.items["domain"])
    domains = script.domains or sorted(sizes)
    unknown = [d for d in domains if d not in sizes]
    check(not unknown, "domains", f"{unknown} not in the dataset (it has {sorted(sizes)})")
    have = set(artifact.item_ids)
    keep = set(domains)
    without = [i for i, d in zip(dataset.item_ids, dataset.items["domain"]) if d in keep and i not in have]
    subset = artifact.meta.get("item_subset")
    if without and subset in ("before_test", "before_valid"):
        # cold-start protocol: the items first seen later have no SID yet; no row the SIDs were fitted on has them
        used = {i for s in script.train_splits for r in dataset.splits[s] for i in (*r["history"], r["target"])}
        late = sorted(used - have)
        if late:
            raise UserError(f"train_splits: {len(late)} items of the training rows have no SID (e.g. {late[0]!r}) in "
                            f"{script.sid_dir} (items: {subset}); train on the rows it was built for")
        log.info("%d items first seen later have no SID (items: %s); the model cannot recommend them until "
                 "python -m tokenization.add_items gives them one", len(without), subset)
    elif without:
        raise UserError(f"{script.sid_dir}: {len(without)} items of the dataset (domains {sorted(keep)}) have no SID "
                        f"(e.g. {without[0]!r}); it was built for other data or other domains")
    if script.val_rec_rows > 0:
        smallest = min(domains, key=lambda d: sizes[d])
        check(script.val_k <= sizes[smallest], "val_k", f"{script.val_k} is larger than domain {smallest!r} "
                                                        f"({sizes[smallest]} items)")
    if script.sid_init == "centroids":
        path = artifact.path / "codebooks" / "centroids.npy" if artifact.path else None
        check(path is not None and path.is_file(), "sid_init", f"centroids needs RQ codebooks ({path} is missing; "
                                                               "FSQ / external SIDs have none)")




def check_truncation(trainer, n_examples: int, max_length: int | None, remove_dir: str | None) -> None:
    """TRL cuts examples to ``max_length`` and drops those left without a completion token: refuse a length that
    drops every example (removing the output directory the Trainer just created, ``remove_dir``), warn about cuts."""
    import shutil

    kept = len(trainer.train_dataset)
    if kept == 0:
        if remove_dir is not None and trainer.is_world_process_zero():
            shutil.rmtree(remove_dir, ignore_errors=True)
        raise UserError(f"max_length: {max_length} tokens cut the completion off every training example "
                        f"({n_examples}); raise it or shorten history_len")
    if max_length is not None and "input_ids" in trainer.train_dataset.column_names:
        import pyarrow.compute as pc

        lengths = pc.list_value_length(trainer.train_dataset.with_format(None).data.column("input_ids"))
        cut = pc.sum(pc.greater_equal(lengths, max_length)).as_py() or 0
        if cut or kept < n_examples:
            log.warning("max_length %d: %d of %d training examples were cut short, %d dropped (no completion left)",
                        max_length, cut, n_examples, n_examples - kept)


def ensure_sid_vocabulary(model, tokenizer, artifact, init: str, dataset) -> dict:
    """Extend the vocabulary, or — for a base that already has it (a merged SFT model) — verify it."""
    if artifact.all_tokens()[0] in tokenizer.get_vocab():
        ids = check_sid_vocabulary(tokenizer, artifact, model)
        return {"init": "from base checkpoint", "first_token_id": ids[0], "last_token_id": ids[-1],
                "n_tokens": len(ids)}
    return extend_vocabulary(model, tokenizer, artifact, init=init, dataset=dataset)


def init_sid_rows_from_centroids(model, tokenizer, artifact) -> None:
    """Scratch decoder: SID token rows = the RQ codebook centroids of their level and code, projected on the top
    principal directions of all centroids and scaled to the model's init std, so codes close in the text space start
    close (levels without centroids, e.g. the de-duplication level, keep their random rows)."""
    import numpy as np

    path = artifact.path / "codebooks" / "centroids.npy" if artifact.path else None
    if path is None or not path.exists():
        raise UserError(f"sid_init: centroids needs RQ codebooks ({path} is missing; FSQ / external SIDs have none)")
    cents = load_npy(path, "RQ centroids")  # [L, K, d]
    emb = model.get_input_embeddings().weight
    hidden = emb.shape[1]
    flat = cents.reshape(-1, cents.shape[-1])
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    proj = flat @ vt[:hidden].T  # [L*K, <= hidden]
    proj = proj / proj.std() * model.config.initializer_range
    rows = np.zeros((flat.shape[0], hidden), dtype=np.float32)
    rows[:, :proj.shape[1]] = proj
    from tokenization.sid_format import sid_token

    pairs = [(level, code) for level in range(min(cents.shape[0], artifact.levels))
             for code in range(min(cents.shape[1], artifact.codebook_sizes[level]))]
    tokens = tokenizer.convert_tokens_to_ids([sid_token(level, code) for level, code in pairs])
    with torch.no_grad():
        emb[torch.tensor(tokens)] = torch.from_numpy(rows[[level * cents.shape[1] + code for level, code in pairs]])


def load_item_text(path: str, dataset, artifact):
    """Text vectors [N, d] in the artifact's item order, from an embeddings directory of the same dataset."""
    from data_builders.embeddings import load_item_embeddings

    emb, _ = load_item_embeddings(path, dataset=dataset)
    row = {item["item_id"]: i for i, item in enumerate(dataset.items)}
    missing = [i for i in artifact.item_ids if i not in row]
    if missing:
        raise UserError(f"{path}: no text vector for SID item {missing[0]!r} ({len(missing)} missing)")
    return emb[[row[i] for i in artifact.item_ids]]


def build_datasets(script: ScriptArguments, dataset, artifact, tokenizer, seed: int):
    weights = {"seq_sid": script.weight_seq_sid, "title2sid": script.weight_title2sid,
               "sid2title": script.weight_sid2title, "seq_title": script.weight_seq_title}
    if script.sequence_packing:
        keep = set(script.domains) if script.domains else None
        rows = [r for s in script.train_splits for r in dataset.splits[s] if keep is None or r["domain"] in keep]
        train = packed_sequence_examples(rows, artifact, tokenizer, script.history_len, seed)
        log.info("sequence packing: %d windows in %d sequences", sum(train["windows"]), len(train))
        columns = ["input_ids", "labels"]
    else:
        train = build_examples(dataset, artifact, tokenizer, script.train_splits, weights, script.history_len,
                               script.domains, seed)
        columns = ["prompt", "completion"]
    if script.max_train_examples is not None:
        train = train.select(range(min(script.max_train_examples, len(train))))
    valid = build_examples(dataset, artifact, tokenizer, ["valid"], {"seq_sid": 1.0}, script.history_len,
                           script.domains, seed)
    valid = valid.select(range(min(script.eval_examples, len(valid))))
    return train.select_columns(columns), valid.select_columns(["prompt", "completion"])


def train(script: ScriptArguments, training: SFTConfig, model_args: ModelConfig) -> SFTTrainer:
    """Build everything, train, save; returns the trainer (its ``model`` is the trained model)."""
    check_args(script, training, model_args)
    check_inputs(script, training)
    dataset = load_rec_dataset(script.dataset_dir)
    artifact = load_sid_artifact(script.sid_dir)
    check_catalogue(script, dataset, artifact)
    if training.resume_from_checkpoint:
        check_resume(training.resume_from_checkpoint, script.resume_fresh_optimizer)
    if model_args.model_name_or_path in SCRATCH_SPECS:  # TIGER-style: SID-only vocabulary, random weights
        text = load_item_text(script.item_text_embeddings, dataset, artifact) if script.item_text_embeddings else None
        model, tokenizer = build_scratch_lm(artifact.all_tokens(), model_args.model_name_or_path,
                                            script.scratch_hidden_size, script.scratch_layers, script.scratch_heads,
                                            seed=training.seed, dropout=script.scratch_dropout,
                                            item_text_dim=0 if text is None else text.shape[1],
                                            n_items=len(artifact.item_ids), sid_levels=artifact.levels)
        if text is not None:
            token_ids = [tokenizer.convert_tokens_to_ids(artifact.sid_tokens(i)) for i in artifact.item_ids]
            model.set_item_text(token_ids, text)
        if script.sid_init == "centroids":
            init_sid_rows_from_centroids(model, tokenizer, artifact)
    else:
        model, tokenizer = load_base(model_args.model_name_or_path, script.mode, script.num_layers,
                                     allow_download=script.allow_download)
    vocab = ensure_sid_vocabulary(model, tokenizer, artifact,
                                  "semantic" if script.sid_init == "auto" else script.sid_init, dataset)
    sid_ids = list(range(vocab["first_token_id"], vocab["last_token_id"] + 1))
    train_ds, valid_ds = build_datasets(script, dataset, artifact, tokenizer, training.seed)
    first = (train_ds[0]["prompt"][-160:], train_ds[0]["completion"]) if "prompt" in train_ds.column_names else (
        tokenizer.decode(train_ds[0]["input_ids"][-40:]), "(packed: labels on every assigned target)")
    log.info("%d training / %d validation examples; e.g. %r -> %r", len(train_ds), len(valid_ds), *first)

    model = apply_mode(model, script.mode, sid_ids, lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                       lora_dropout=model_args.lora_dropout, lora_target_modules=model_args.lora_target_modules,
                       train_sid_rows=script.train_sid_rows)
    callbacks = []
    if script.time_budget_minutes is not None:
        callbacks.append(TimeBudget(script.time_budget_minutes, script.time_budget_clock,
                                    show_progress=not training.disable_tqdm))
    if script.val_rec_rows > 0:
        rows = sample_rows(dataset.splits["valid"], script.val_rec_rows, training.seed)
        rows = [r for r in rows if script.domains is None or r["domain"] in script.domains]
        catalogue = Catalogue.from_artifact(artifact, dataset)
        callbacks.append(ConstrainedValidation(tokenizer, catalogue, rows, k=script.val_k, num_beams=script.val_beams,
                                               history_len=script.history_len))
    if script.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=script.early_stopping_patience))
    callbacks.append(MetricsLog(training.output_dir))  # after ConstrainedValidation: it logs what that adds
    if script.mode != "full" and script.train_sid_rows:
        callbacks.append(SidRowGuard(trainable_embedding_params(model), sid_ids).install())
    log.info("parameters: %s", count_parameters(model))

    created = not Path(training.output_dir).exists()
    trainer = SFTTrainer(model=model, args=training, train_dataset=train_ds, eval_dataset=valid_ds,
                         processing_class=tokenizer, callbacks=callbacks)
    check_truncation(trainer, len(train_ds), training.max_length, training.output_dir if created else None)
    if script.mode == "qlora":
        upcast_trainable(trainer.model)  # before the optimizer exists; see sft.modeling.upcast_trainable
    if script.time_budget_minutes is not None:  # its own bar shows the budget; the step bar's total would not
        from transformers.trainer_callback import ProgressCallback

        trainer.remove_callback(ProgressCallback)
    trainer.train(resume_from_checkpoint=training.resume_from_checkpoint)
    trainer.save_model(training.output_dir)
    if script.mode in ("lora", "qlora") and trainer.is_world_process_zero():
        save_sid_rows(trainer.model, sid_ids, training.output_dir)
    trainer.save_state()  # trainer_state.json: the loss curve and step, beside the model
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training.output_dir)
        write_checkpoint_meta(training.output_dir, {
            "model": model_args.model_name_or_path, "mode": script.mode, "num_layers": script.num_layers,
            "sid_dir": script.sid_dir, "sid_hash": sid_artifact_hash(artifact), "dataset_hash": dataset.dataset_hash,
            "vocab": vocab, "history_len": script.history_len,
            "config": {"script": asdict(script), "model": asdict(model_args), "training": training.to_dict()},
            "command": " ".join(sys.orig_argv),
        })
    return trainer


def run_sft(argv: list[str] | None = None) -> SFTTrainer:
    """Parse (strictly: unknown keys, wrong types), validate, train; returns the trainer (the Python API)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    return train(*parse_config((ScriptArguments, SFTConfig, ModelConfig), argv))


def main(argv: list[str] | None = None) -> int:
    """The CLI: exit 0, or 2 with one ``error: <where>: <problem>`` line for a user error (data_builders/cli.py).
    Under ``accelerate launch`` the launcher adds its own traceback for any non-zero exit unless ``--quiet``."""
    return run_cli(run_sft, argv)


if __name__ == "__main__":
    sys.exit(main())
