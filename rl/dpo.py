"""DPO with self-hard negatives on stock TRL (``DPOTrainer``): chosen = the target's SID, rejected = the SFT model's
own highest-ranked wrong beams (or popular / random items; :mod:`rl.pairs`).

    python rl/dpo.py --config configs/rl/dpo_scratch.yaml --sft_checkpoint artifacts/amazon18/sft_scratch
    python rl/dpo.py --config configs/tiny/dpo.yaml --max_steps 2

Loads the SFT checkpoint through ``sft.modeling.load_sft_checkpoint``, mines the pairs on the training rows with the
starting policy (``negatives`` per prompt, each its own pair: TRL's DPO losses are pairwise, so S-DPO's
multi-negative softmax form is not offered — it would need a fork), trains with ``DPOConfig`` (``beta``,
``loss_type`` one of TRL's pairwise losses), keeps the best step on valid rows, and saves a checkpoint that eval and
``recommend()`` load unchanged (its ``genrec_sft.json`` names the parent).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python rl/dpo.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from data_builders.cli import UserError, check, check_choice, check_output_dir, check_range, parse_config, run_cli
from decoding.catalogue import Catalogue
from rl.common import (RLArguments, check_rl_args, domain_sizes, load_policy, require_world_size_one,
                       standard_callbacks, train_and_save, training_rows)
from rl.pairs import SOURCES, build_pairs

log = logging.getLogger("rl.dpo")
# TRL's pairwise losses that need nothing but (prompt, chosen, rejected) and a reference policy, and `sft` (NLL on
# the chosen completion: `loss_type: [sigmoid, sft]` with `loss_weights` is DPO + an SFT term, RPO-style)
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down",
              "exo_pair", "discopop", "sigmoid_norm", "sft")


@dataclass
class DPOArguments(RLArguments):
    negatives: int = field(default=3, metadata={"help": "rejected items per prompt (one pair each)"})
    negative_source: str = field(default="self_hard", metadata={"help": f"one of {SOURCES}"})
    pair_beams: int | None = field(default=None, metadata={"help": "beam width for self_hard mining (default "
                                                                   "negatives + 1)"})


def check_args(script: DPOArguments, training: DPOConfig) -> None:
    check_rl_args(script, training)
    check_range("negatives", script.negatives, 1)
    check_choice("negative_source", script.negative_source, SOURCES)
    check_range("pair_beams", script.pair_beams, script.negatives + 1, allow_none=True)
    for loss in training.loss_type:
        check_choice("loss_type", loss, LOSS_TYPES)
    check_output_dir(training.output_dir)


def train(script: DPOArguments, training: DPOConfig) -> DPOTrainer:
    require_world_size_one()
    check_args(script, training)
    def precheck(dataset):
        smallest = min(domain_sizes(dataset, script).items(), key=lambda kv: kv[1])
        check(script.negatives + 1 <= smallest[1], "negatives",
              f"{script.negatives} needs {script.negatives + 1} items per domain; domain {smallest[0]!r} has "
              f"{smallest[1]}")

    model, tokenizer, artifact, meta, dataset = load_policy(script, precheck)
    catalogue = Catalogue.from_artifact(artifact, dataset)
    rows = training_rows(script, dataset, training.seed)
    try:
        pairs, stats = build_pairs(model, tokenizer, catalogue, rows, history_len=script.history_len,
                                   negatives=script.negatives, source=script.negative_source,
                                   num_beams=script.pair_beams, popularity_rows=rows, seed=training.seed,
                                   show_progress=not training.disable_tqdm)
    except ValueError as e:
        raise UserError(f"`negatives`: {e}") from None
    log.info("DPO pairs: %s", stats)
    train_ds = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    callbacks, metrics_log, validation = standard_callbacks(script, training, tokenizer, catalogue, dataset,
                                                            show_progress=not training.disable_tqdm,
                                                            parent_meta=meta)
    callbacks.append(metrics_log)
    trainer = DPOTrainer(model=model, args=training, train_dataset=train_ds, processing_class=tokenizer,
                         callbacks=callbacks)
    return train_and_save(trainer, validation, tokenizer, artifact, meta, script, training, "dpo", {"pairs": stats})


def run_dpo(argv: list[str] | None = None) -> DPOTrainer:
    """Parse (strictly), validate, mine pairs, train; returns the trainer (the Python API)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    return train(*parse_config((DPOArguments, DPOConfig), argv))


def main(argv: list[str] | None = None) -> int:
    return run_cli(run_dpo, argv)


if __name__ == "__main__":
    sys.exit(main())
