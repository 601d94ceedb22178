"""Optional fine-tuning of the text encoder's last layers together with a user tower (seed 000 §3.3.1: of
all-MiniLM-L6-v2's 6 layers the first 4 stay frozen and the last 2 train).

Item vectors are then computed by the encoder during training (mean pooling + L2, as data_builders/embeddings.py),
for the distinct items of each batch (history and target items); frozen layers build no autograd graph, so only
the trained layers keep activations for the backward pass. After training the whole catalogue is re-encoded.

Cost on this CPU: every step runs the encoder over a few hundred item texts (batch 64 rows, item texts cut to 64
tokens): ~4 s per step, ~0.5 h per epoch of the 29k test-protocol rows, plus ~1.5 min per catalogue encoding and
~2.6 GB peak RSS (benchmarks/dense_bench.py measures it). Off by default (``dense_finetune_encoder_layers: 0``).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer layers of an HF encoder (BERT/MiniLM/RoBERTa: ``encoder.layer``; others: ``layers``)."""
    for path in ("encoder.layer", "layers", "transformer.layer"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"{type(model).__name__}: cannot find its transformer layers to fine-tune")


class TrainableTextEncoder(nn.Module):
    """An HF encoder over a fixed list of item texts; only its last ``train_layers`` layers are trainable.

    ``self(rows)`` -> unit vectors [len(rows), d] of the texts at ``rows`` (differentiable); ``encode_all()`` ->
    float32 [N, d] without gradients.
    """

    def __init__(self, path: str, texts: Sequence[str], train_layers: int, max_length: int):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        layers = encoder_layers(self.model)
        if not 1 <= train_layers <= len(layers):
            raise ValueError(f"finetune_encoder_layers={train_layers}: the encoder has {len(layers)} layers")
        self.model.requires_grad_(False)
        for layer in layers[len(layers) - train_layers:]:
            layer.requires_grad_(True)
        self.dim = int(self.model.config.hidden_size)
        # Tokenised once: [N] lists of token ids (with special tokens), truncated to max_length.
        self.ids = self.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [M] (repeats allowed; each distinct text is encoded once) -> [M, d]."""
        unique, inverse = torch.unique(rows, return_inverse=True)
        batch = self.tokenizer.pad({"input_ids": [self.ids[i] for i in unique.tolist()]}, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state  # [U, T, d]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [U, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [U, d]
        return F.normalize(pooled, dim=-1)[inverse]

    @torch.no_grad()
    def encode_all(self, batch_size: int = 128) -> np.ndarray:
        was_training = self.training
        self.eval()
        rows = torch.arange(len(self.ids))
        out = [self(rows[s : s + batch_size]) for s in tqdm(range(0, len(rows), batch_size),
                                                          desc="re-encoding items", unit="batch")]
        self.train(was_training)
        return torch.cat(out).numpy().astype(np.float32)
