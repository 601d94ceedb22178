"""Base model + SID vocabulary + training mode, and reloading a fine-tuned checkpoint with the same vocabulary.

Modes:

* ``lora``       — LoRA on the linear layers (peft) + the SID embedding rows trainable.
* ``qlora``      — the same on a 4-bit NF4 base (bitsandbytes; ≥ 0.48 also runs on CPU, slowly).
* ``full``       — every parameter trains.
* ``new_tokens`` — the LLM is frozen; only the SID embedding rows train.

New tokens under LoRA do not learn unless their rows are trainable (LC-Rec #21). peft's ``trainable_token_indices``
breaks inside TRL's trainers (PITFALLS), so the embedding matrix is put in ``modules_to_save`` (tied to the output
head with ``ensure_weight_tying``) and :class:`SidRowGuard` keeps every non-SID row exactly at its original value:
a gradient hook zeroes their gradients and, after each optimizer step, the rows are restored (weight decay would
otherwise shrink them).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from tokenization.vocab import _is_tied
from sft.models import EMBEDDED_LLMS, TINY_SPECS, ensure_embedded_checkpoint, load_causal_lm, truncate_layers

log = logging.getLogger(__name__)

MODES = ("lora", "qlora", "full", "new_tokens")
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_base(spec: str, mode: str, num_layers: int | None = None, compute_dtype: torch.dtype | None = None,
              allow_download: bool = False):
    """``(model, tokenizer)``; for ``qlora`` the linear layers are loaded as 4-bit NF4 (bitsandbytes) with
    ``compute_dtype`` (default bf16 on a GPU that supports it, else fp32 — bf16 is ~45x slower on AVX2 CPUs)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose from {MODES}")
    if mode != "qlora":
        return load_causal_lm(spec, num_layers=num_layers, allow_download=allow_download)
    if compute_dtype is None:
        gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        compute_dtype = torch.bfloat16 if gpu_bf16 else torch.float32
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    if spec in TINY_SPECS:
        raise ValueError("qlora needs a checkpoint on disk; the in-process `tiny` model cannot be loaded in 4-bit")
    path = str(ensure_embedded_checkpoint(spec)) if spec in EMBEDDED_LLMS else spec
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute_dtype)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=compute_dtype,
                                                 local_files_only=not allow_download)
    keep_plain_4bit_layout_where_unpackable(model)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=not allow_download)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if num_layers is not None:
        truncate_layers(model, num_layers)
    return model, tok


def keep_plain_4bit_layout_where_unpackable(model, block_n: int = 32) -> int:
    """On a CPU with AVX512-BF16, bitsandbytes repacks each 4-bit weight for its CPU kernel at the first eval-mode
    forward; the repacking needs ``in_features`` to be a multiple of the quantisation block size and ``out_features``
    of ``block_n`` and crashes otherwise (``shape '[32, 0]' is invalid``: small hidden sizes). Those layers keep the
    plain layout (same results, the generic kernel). Returns how many layers were switched."""
    import bitsandbytes as bnb

    switched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module, "support_avx512bf16_for_cpu", False):
            blocksize = getattr(module.weight.quant_state, "blocksize", 64) or 64
            if module.in_features % blocksize or module.in_features < blocksize or module.out_features % block_n:
                module.support_avx512bf16_for_cpu = False
                switched += 1
    return switched


def lora_config(model, r: int, alpha: int, dropout: float, target_modules: list[str] | None,
                train_sid_rows: bool = True):
    """LoRA on ``target_modules``; with ``train_sid_rows`` the embedding (and an untied output head) become
    trainable copies (``modules_to_save``) whose non-SID rows :class:`SidRowGuard` pins."""
    from peft import LoraConfig

    tied = _is_tied(model)
    to_save = (["embed_tokens"] if tied else ["embed_tokens", "lm_head"]) if train_sid_rows else None
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or DEFAULT_LORA_TARGETS,
        modules_to_save=to_save, ensure_weight_tying=tied and train_sid_rows, task_type="CAUSAL_LM",
    )


def upcast_trainable(model) -> int:
    """QLoRA: TRL's SFTTrainer casts every trainable parameter of a 4-bit model to bf16, while
    ``prepare_model_for_kbit_training`` leaves every other non-quantized parameter (norms, the frozen embedding) in
    fp32: without autocast (CPU, ``bf16: false``) the trained model then fails outside the trainer (dtype mismatch in
    evaluation and generation), and its bf16 SID rows differ from what a reload builds. Cast them back to fp32 (the
    master copy mixed precision keeps anyway; autocast still computes in bf16). Returns how many were cast."""
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.to(torch.float32)
            cast += 1
    return cast


def trainable_embedding_params(model) -> list[torch.nn.Parameter]:
    """The embedding matrices that train (the peft copy under ``modules_to_save``, or the base matrix)."""
    params = {id(p): p for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
              for p in m.parameters() if p.requires_grad}
    return list(params.values())


def apply_mode(model, mode: str, sid_ids: list[int], *, lora_r: int = 16, lora_alpha: int = 32,
               lora_dropout: float = 0.05, lora_target_modules: list[str] | None = None, train_sid_rows: bool = True):
    """Make the right parameters trainable for ``mode``; returns the (possibly peft-wrapped) model."""
    if mode in ("lora", "qlora"):
        from peft import get_peft_model, prepare_model_for_kbit_training

        if mode == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        config = lora_config(model, lora_r, lora_alpha, lora_dropout, lora_target_modules, train_sid_rows)
        model = get_peft_model(model, config)
    elif mode == "new_tokens":
        for p in model.parameters():
            p.requires_grad_(False)
        for m in (model.get_input_embeddings(), model.get_output_embeddings()):
            if m is not None:
                m.weight.requires_grad_(True)
    elif mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    return model


class SidRowGuard(TrainerCallback):
    """Only the SID rows of the trainable embedding matrices may change (not used in ``full`` mode).

    ``install()`` registers gradient hooks that zero every non-SID row; ``on_optimizer_step`` copies the original
    non-SID rows back, so any optimizer (weight decay, momentum) leaves them bit-identical.
    """

    def __init__(self, params: list[torch.nn.Parameter], sid_ids: list[int]):
        self.params = params
        rows = params[0].shape[0]
        self.frozen = torch.ones(rows, dtype=torch.bool)
        self.frozen[torch.tensor(sid_ids)] = False  # [rows] True = must not change
        self.originals = [p.detach()[self.frozen].clone() for p in params]

    def install(self) -> "SidRowGuard":
        for p in self.params:
            mask = (~self.frozen).to(p.device, p.dtype).unsqueeze(1)  # [rows, 1]
            p.register_hook(lambda g, m=mask: g * m.to(g.dtype))  # 4-bit bases may produce bf16 gradients
        return self

    def restore(self) -> None:
        with torch.no_grad():
            for p, orig in zip(self.params, self.originals):
                p[self.frozen.to(p.device)] = orig.to(p.device, p.dtype)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.restore()


def count_parameters(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}


def sid_artifact_hash(artifact) -> str:
    """One hash for a SID artifact (over its files' content hashes)."""
    return hashlib.sha256(json.dumps(artifact.meta["content_hashes"], sort_keys=True).encode()).hexdigest()


def write_checkpoint_meta(out_dir: str | Path, meta: dict) -> None:
    from data_builders.dataset import write_json

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(out_dir) / "genrec_sft.json", meta)


SID_ROWS_FILE = "sid_rows.safetensors"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def save_sid_rows(model, sid_ids: list[int], out_dir: str | Path) -> None:
    """The SID rows of the input embedding (and of an untied output head) as trained, beside a LoRA adapter.

    peft saves them only when they train (``modules_to_save``); with ``train_sid_rows: false`` on a base without SID
    rows they are the initialisation (semantic: not reproducible from the base alone), so they are always saved and
    :func:`load_sft_checkpoint` puts them back: the reloaded model gives the trained model's logits in every mode.
    """
    from safetensors.torch import save_file

    ids = torch.tensor(sid_ids)
    rows = {"sid_ids": ids, "input": model.get_input_embeddings().weight.detach()[ids].float().cpu().contiguous()}
    out = model.get_output_embeddings()
    if out is not None and not _is_tied(model):
        rows["output"] = out.weight.detach()[ids].float().cpu().contiguous()
    save_file(rows, str(Path(out_dir) / SID_ROWS_FILE))


def require_adapter(path: Path, what: str = "a LoRA checkpoint") -> None:
    """``path`` holds a LoRA adapter (config + weights): peft would otherwise take the directory name for a hub id
    and fail in hub code (``HFValidationError``)."""
    from data_builders.dataset import DataError

    missing = "adapter_config.json" if not (path / "adapter_config.json").is_file() else \
        None if any((path / f).is_file() for f in ADAPTER_FILES) else ADAPTER_FILES[0]
    if missing:
        raise DataError(f"{path}: {what} without its adapter ({missing} missing); the training run did not finish "
                        "saving, or files were removed")


def restore_sid_rows(model, path: Path) -> None:
    from safetensors.torch import load_file

    rows = load_file(str(path / SID_ROWS_FILE))
    ids = rows["sid_ids"]
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[ids] = rows["input"].to(emb.device, emb.dtype)
        if "output" in rows:
            head = model.get_output_embeddings().weight
            head[ids] = rows["output"].to(head.device, head.dtype)


def load_sft_checkpoint(path: str | Path, allow_download: bool = False, trainable: bool = False):
    """``(model, tokenizer, artifact)`` from a directory written by ``sft/train.py`` (or an RL stage, ``rl/``).

    The base model is rebuilt exactly as in training (same spec, layers, SID vocabulary from the same artifact),
    then the LoRA adapter (or the full weights) is loaded on top, so the SID token ids match by construction; the
    SID rows saved beside the adapter are put back. Everything is read locally (``allow_download`` lets a hub base
    model id be fetched; the adapter always comes from ``path``).
    """
    from data_builders.cli import read_json_file, require_dir
    from data_builders.dataset import DataError
    from tokenization.artifact import load_sid_artifact
    from tokenization.vocab import check_sid_vocabulary, extend_vocabulary

    path = require_dir(path, "SFT checkpoint")
    meta_path = path / "genrec_sft.json"
    if not meta_path.exists():
        raise DataError(f"{path}: not an SFT checkpoint (no genrec_sft.json; sft/train.py writes one)")
    meta = read_json_file(meta_path, "SFT checkpoint meta")
    artifact = load_sid_artifact(meta["sid_dir"])
    if sid_artifact_hash(artifact) != meta["sid_hash"]:
        raise DataError(f"{path}: trained with SID artifact {meta['sid_hash'][:12]}, but {meta['sid_dir']} now "
                        f"holds {sid_artifact_hash(artifact)[:12]}; use the artifact the model was trained with")
    if meta["mode"] in ("full", "new_tokens"):  # saved as a whole model with the SID vocabulary inside
        model, tok = load_causal_lm(str(path))
        check_sid_vocabulary(tok, artifact, model)
        return model, tok, artifact
    from peft import PeftModel

    require_adapter(path, f"a {meta['mode']} checkpoint")
    base, tok = load_base(meta["model"], meta["mode"], meta["num_layers"], allow_download=allow_download)
    if artifact.all_tokens()[0] in tok.get_vocab():  # a merged base that already carries the SID rows
        check_sid_vocabulary(tok, artifact, base)
    else:
        extend_vocabulary(base, tok, artifact, init="mean")  # placeholders: the saved SID rows replace them
    if meta["mode"] == "qlora":  # as in training (apply_mode): non-quantized parameters in fp32
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    # trainable: the adapter (and its SID rows) keep training, e.g. in RL (rl/common.py)
    model = PeftModel.from_pretrained(base, str(path), is_trainable=trainable, local_files_only=True)
    if (path / SID_ROWS_FILE).is_file():
        restore_sid_rows(model, path)
    elif not meta.get("config", {}).get("script", {}).get("train_sid_rows", True):
        raise DataError(f"{path}: trained with frozen SID rows but has no {SID_ROWS_FILE} (written by an older "
                        "version); its SID rows cannot be restored — retrain it")
    return model.eval(), tok, artifact


def merge_checkpoint(path: str | Path, out_dir: str | Path) -> Path:
    """Merge a LoRA SFT checkpoint (adapter + trained SID rows) into a plain full model in ``out_dir``.

    The merged model is the shared base for per-domain adapters: they train linear layers only, so they stay
    swappable (and servable by vLLM) while every domain sees the same SID rows.
    """
    from data_builders.cli import check, check_output_dir, read_json_file, require_dir

    path = require_dir(path, "SFT checkpoint", containing="genrec_sft.json")
    meta = read_json_file(path / "genrec_sft.json", "SFT checkpoint meta")
    check(meta.get("mode") != "qlora", str(path), "a qlora checkpoint cannot be merged: its base is 4-bit, so "
                                                  "merging re-quantises the weights and the result loads as neither "
                                                  "a full nor a 4-bit base; train the shared model with mode: lora")
    out = check_output_dir(out_dir, "merge output_dir")
    check(out.resolve() != path.resolve(), str(out), "merge output_dir is the checkpoint itself")
    model, tok, artifact = load_sft_checkpoint(path)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    write_checkpoint_meta(out_dir, {**meta, "mode": "full", "model": str(out_dir), "merged_from": str(path)})
    return Path(out_dir)


def load_domain_adapters(base_dir: str | Path, adapters: dict[str, str | Path]):
    """A merged base with one named LoRA adapter per domain: ``(model, tokenizer, artifact)``.

    Generate for a mixed-domain batch with ``model.generate(..., adapter_names=[domain of each row])`` (peft
    expands the names over beams); rows whose domain has no adapter can use ``"__base__"``.
    """
    from peft import PeftModel

    from data_builders.cli import read_json_file, require_dir
    from data_builders.dataset import DataError

    base, tok, artifact = load_sft_checkpoint(base_dir)
    model = None
    for name, adapter_dir in sorted(adapters.items()):
        adapter_dir = require_dir(adapter_dir, f"domain adapter {name!r}")
        adapter_meta = read_json_file(adapter_dir / "genrec_sft.json", f"domain adapter {name!r} meta")
        require_adapter(adapter_dir, f"domain adapter {name!r}")
        if adapter_meta["sid_hash"] != sid_artifact_hash(artifact):
            raise DataError(f"{adapter_dir}: domain adapter {name!r} was trained with another SID artifact than "
                            f"the base {base_dir}")
        if model is None:  # local files only: the adapter is a directory, never a hub id
            model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=name, is_trainable=False,
                                              local_files_only=True)
        else:
            model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False, local_files_only=True)
    return model.eval(), tok, artifact
