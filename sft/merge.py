"""Merge a LoRA SFT checkpoint into a full model: the shared base for per-domain adapters.

    python -m sft.merge --checkpoint artifacts/amazon18/sft --output_dir artifacts/amazon18/sft_merged

Per-domain adapters are then trained on it with ``model_name_or_path: <output_dir>``, ``domains: [<domain>]``,
``train_sid_rows: false`` (linear layers only, so every domain shares the merged SID rows). A user error (a missing
or non-SFT checkpoint, a qlora checkpoint, an output_dir that is a file) is one ``error:`` line and exit 2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from data_builders.cli import parse_config, run_cli
from sft.modeling import merge_checkpoint


@dataclass
class MergeArgs:
    checkpoint: str = field(metadata={"help": "directory written by sft/train.py (a LoRA checkpoint)"})
    output_dir: str = field(metadata={"help": "where the merged full model goes"})


def _main(argv: list[str]) -> None:
    (args,) = parse_config((MergeArgs,), argv)
    out = merge_checkpoint(args.checkpoint, args.output_dir)
    print(f"merged {args.checkpoint} -> {out}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
