"""Merge a LoRA SFT checkpoint into a full model: the shared base for per-domain adapters.

    python -m sft.merge --checkpoint artifacts/amazon18/sft --output_dir artifacts/amazon18/sft_merged

Per-domain adapters are then trained on it with ``model_name_or_path: <output_dir>``, ``domains: [<domain>]``,
``train_sid_rows: false`` (linear layers only, so every domain shares the merged SID rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import TrlParser

from sft.modeling import merge_checkpoint


@dataclass
class MergeArgs:
    checkpoint: str = field(metadata={"help": "directory written by sft/train.py (a LoRA checkpoint)"})
    output_dir: str = field(metadata={"help": "where the merged full model goes"})


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((MergeArgs,)).parse_args_and_config(argv)
    out = merge_checkpoint(args.checkpoint, args.output_dir)
    print(f"merged {args.checkpoint} -> {out}")


if __name__ == "__main__":
    main()
