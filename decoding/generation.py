"""The one place a decoding ``GenerationConfig`` is built, with every field explicit.

Why: ``generate`` fills every field left ``None`` from the checkpoint's ``generation_config.json``. Instruct models ship
``do_sample=true, top_k=20, top_p=0.8, temperature=0.7, repetition_penalty=1.05``, which silently turned peers'
constrained beam search into beam *sampling* (MiniOneRec #49/#52). Here every field that changes decoding gets a
value; the few whose only neutral value is ``None`` (``suppress_tokens``, ``bad_words_ids``, ...) are checked on the
model by :func:`check_generation_defaults`, which raises instead of letting them apply.

Scores: beam search uses ``length_penalty=0.0``, so a beam's score is the plain sum of the model's log-probs of its
SID tokens plus EOS — the same quantity :mod:`decoding.reference` computes exactly.
"""

from __future__ import annotations

from typing import Any

from transformers import GenerationConfig

MODES = ("greedy", "beam", "sample")

# Fields whose neutral value is None: an explicit None would be filled from the checkpoint, so instead we refuse
# checkpoints that set them (value -> "neutral?" test).
_NONE_NEUTRAL = (
    "bad_words_ids", "begin_suppress_tokens", "suppress_tokens", "sequence_bias", "forced_bos_token_id",
    "forced_eos_token_id", "exponential_decay_length_penalty", "watermarking_config", "top_h", "dola_layers",
    "stop_strings", "max_time", "prompt_lookup_num_tokens", "penalty_alpha", "constraints", "force_words_ids",
)


def build_generation_config(
    *, sid_length: int, eos_token_id: int, pad_token_id: int, mode: str = "beam", num_beams: int = 1,
    num_return_sequences: int = 1, temperature: float = 1.0,
) -> GenerationConfig:
    """A complete config for constrained SID decoding: ``sid_length`` SID tokens then EOS, nothing else.

    mode: "greedy" | "beam" (deterministic beam search, ``num_beams`` beams) | "sample" (multinomial sampling from
    the constrained distribution at ``temperature``; ``num_return_sequences`` samples per prompt).

    >>> cfg = build_generation_config(sid_length=3, eos_token_id=2, pad_token_id=0, mode="beam", num_beams=8,
    ...                               num_return_sequences=8)
    >>> cfg.do_sample, cfg.top_p, cfg.max_new_tokens, cfg.length_penalty
    (False, 1.0, 4, 0.0)
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose from {MODES}")
    if sid_length < 1:
        raise ValueError(f"sid_length must be >= 1, got {sid_length}")
    if mode != "beam":
        num_beams = 1
    if num_return_sequences > num_beams and mode != "sample":
        raise ValueError(f"num_return_sequences={num_return_sequences} > num_beams={num_beams} needs mode='sample'")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return GenerationConfig(**_explicit_fields(sid_length, eos_token_id, pad_token_id, mode, num_beams,
                                               num_return_sequences, temperature))


def _explicit_fields(sid_length, eos_token_id, pad_token_id, mode, num_beams, num_return_sequences,
                     temperature) -> dict[str, Any]:
    sample, beam = mode == "sample", mode == "beam"
    return dict(
        # length: exactly the SID tokens, then EOS (the trie forbids EOS earlier; min_new_tokens says so too).
        # max_new_tokens/min_new_tokens override max_length/min_length, so those cannot leak either.
        max_new_tokens=sid_length + 1, min_new_tokens=sid_length,
        # strategy
        do_sample=sample, num_beams=num_beams, num_return_sequences=num_return_sequences, num_beam_groups=1,
        diversity_penalty=0.0, low_memory=False,
        # beam-only fields; greedy/sampling never read them (neutral values there keep HF from warning)
        early_stopping=beam, length_penalty=0.0 if beam else 1.0,
        # warpers: the leak (Instruct checkpoints set top_k/top_p/temperature). generate applies them only when
        # do_sample=True; then they are neutral. top_k=50/min_p=None without sampling are HF's "unused" markers.
        temperature=float(temperature) if sample else 1.0, top_k=0 if sample else 50, top_p=1.0,
        min_p=0.0 if sample else None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        # processors applied in every mode: all neutral
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, guidance_scale=1.0, renormalize_logits=False, remove_invalid_values=False,
        token_healing=False,
        # tokens and outputs
        eos_token_id=int(eos_token_id), pad_token_id=int(pad_token_id), use_cache=True,
        # beam: sequences_scores (needs output_scores); greedy/sample: raw logits to score the generated SID
        return_dict_in_generate=True, output_scores=beam, output_logits=not beam,
    )


def check_generation_defaults(model) -> None:
    """Raise if ``model.generation_config`` sets a field that the explicit config cannot override.

    Those fields' neutral value is ``None``, which ``generate`` treats as "unset" and fills from the model.
    """
    config = getattr(model, "generation_config", None)
    if config is None:
        return
    bad = {name: getattr(config, name, None) for name in _NONE_NEUTRAL if getattr(config, name, None) is not None}
    if bad:
        raise ValueError(f"the model's generation_config sets {bad}, which would change constrained decoding and "
                         "cannot be overridden by an explicit GenerationConfig; clear them first, e.g. "
                         f"`model.generation_config.{next(iter(bad))} = None`")
