"""Trie-constrained rollouts for TRL's ``GRPOTrainer(rollout_func=...)``: every completion is a real item.

TRL's contract (trl 1.16, ``GRPOTrainer._generate``): ``rollout_func(prompts, trainer) -> dict`` with
``prompt_ids``, ``completion_ids`` and ``logprobs`` (one list per entry of ``prompts``), any other key reaching the
reward functions as a keyword argument. ``prompts`` holds each prompt ``num_generations`` times in a row (TRL's
``RepeatSampler``), so a group is G consecutive entries; one completion is returned per entry.

Two modes:

* ``beam`` — the G best distinct items of the prompt's domain from one trie beam search (one prefill per prompt,
  :func:`decoding.beam.trie_beam_search`), ordered by sequence log-prob. Deterministic and always G distinct items,
  but not samples of the policy: GRPO's importance ratio assumes on-policy samples, which beams are not.
* ``sample`` — G independent samples from the trie-constrained policy at ``temperature`` (softmax over the allowed
  tokens only, level by level; one prefill per prompt, the KV cache expanded to G rows). Duplicates are kept: they
  are what the policy samples, each scored on its own (their share is logged as ``rollout/duplicate_share``).

Completions are the L SID tokens followed by EOS. ``logprobs`` are the per-token log-probs of those tokens under the
current policy, the full-vocabulary log-softmax of a teacher-forced forward pass in eval mode — what the trainer
itself computes for the same tokens. Extra fields per completion: ``item_id``, ``group_id`` (the prompt's index in
this batch), ``group_rank`` (0 = highest sequence log-prob in its group) and ``in_group`` (1.0 if the group holds
the target — the share of groups that can teach anything with an exact-hit reward).
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from decoding.beam import _decode, _prefill, trie_beam_search
from decoding.catalogue import Catalogue
from decoding.recommend import encode_prompts
from decoding.trie import TrieTables

MODES = ("beam", "sample")


@torch.no_grad()
def trie_sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, tables: TrieTables,
                roots: torch.Tensor, num_samples: int, eos_token_id: int, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_samples`` SIDs per prompt from the constrained policy: (tokens [B, G, L], leaves [B, G],
    scores [B, G] = raw log P(SID, EOS | prompt), the full-vocabulary log-softmax at temperature 1)."""
    batch = input_ids.shape[0]
    logp, cache, mask, position = _prefill(model, input_ids, attention_mask)  # [B, V]
    rows = torch.arange(batch, device=logp.device).repeat_interleave(num_samples)  # [B*G]
    cache.reorder_cache(rows)
    logp, mask, position = logp[rows], mask[rows], position[rows]
    node = roots.to(logp.device)[rows]
    total = torch.zeros(len(rows), device=logp.device)
    tokens = []
    for level in range(tables.levels):
        cols = tables.vocab[level]
        allowed = tables.allowed_codes(level, node)  # [R, W]
        logits = torch.where(allowed, logp[:, cols] / temperature, float("-inf"))
        choice = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)  # [R]
        token = cols[choice]
        total = total + logp.gather(1, token[:, None]).squeeze(1)
        node = tables.child(level, node, token)
        tokens.append(token)
        logp, mask, position = _decode(model, token[:, None], cache, mask, position)
    total = total + logp[:, eos_token_id]
    return (torch.stack(tokens, 1).view(batch, num_samples, -1), node.view(batch, num_samples),
            total.view(batch, num_samples).float())


@torch.no_grad()
def completion_logprobs(model, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]],
                        pad_token_id: int, batch_size: int = 64) -> list[list[float]]:
    """Per-token log P(completion token | prompt, earlier tokens) by a teacher-forced forward pass (eval mode).

    Prompts are left-padded with positions from the attention mask (as in decoding); completions must be equally
    long (a SID + EOS always is)."""
    lengths = {len(c) for c in completion_ids}
    if len(lengths) != 1:
        raise ValueError(f"completions of different lengths {sorted(lengths)}")
    width = lengths.pop()
    out: list[list[float]] = []
    device = next(model.parameters()).device
    for start in range(0, len(prompt_ids), batch_size):
        prompts = prompt_ids[start:start + batch_size]
        comps = torch.tensor(completion_ids[start:start + batch_size], dtype=torch.long)
        plen = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), plen + width), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, plen - len(p):plen] = torch.tensor(p, dtype=torch.long)
            mask[i, plen - len(p):] = 1
        ids[:, plen:] = comps
        ids, mask = ids.to(device), mask.to(device)
        position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position).logits  # [b, P+W, V]
        logp = F.log_softmax(logits[:, plen - 1:plen + width - 1, :].float(), dim=-1)  # predicts each completion tok
        out.extend(logp.gather(2, comps.to(device)[:, :, None]).squeeze(2).tolist())
    return out


class ConstrainedRollouts:
    """The ``rollout_func`` for ``GRPOTrainer``: G valid items per prompt, ``beam`` or ``sample`` mode.

    domain_of: ``{prompt: domain}`` for every training prompt (the trie root of its row; None = whole catalogue),
    targets: ``{prompt: target item}`` (the ``in_group`` statistic, and ``inject_target``).
    inject_target: where a group lacks the target, its last completion (the lowest beam in beam mode) is replaced
    by the target's SID (the group then always holds one positive: every group teaches, as a listwise loss against
    the model's own top items; the injected completion is not a sample of the policy). Ranks are recomputed from
    the log-probs after injection.
    """

    def __init__(self, tokenizer, catalogue: Catalogue, num_generations: int, mode: str = "beam",
                 temperature: float = 1.0, domain_of: Mapping[str, str | None] | None = None,
                 targets: Mapping[str, str] | None = None, batch_size: int = 16, seed: int = 0,
                 inject_target: bool = False):
        if mode not in MODES:
            raise ValueError(f"rollout mode {mode!r}; choose from {MODES}")
        if num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 (a group needs two completions), got {num_generations}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos_token; every SID ends with EOS")
        self.tokenizer, self.catalogue, self.G, self.mode = tokenizer, catalogue, num_generations, mode
        self.temperature, self.batch_size = temperature, batch_size
        self.domain_of, self.targets = dict(domain_of or {}), dict(targets or {})
        if inject_target and not self.targets:
            raise ValueError("inject_target needs the target of every prompt (targets)")
        self.inject_target = inject_target
        self.trie = catalogue.trie(tokenizer)
        self.eos = int(tokenizer.eos_token_id)
        self.pad = self.eos if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id)
        smallest = min(self.trie.root_sizes[self.trie.root(d)] for d in (set(self.domain_of.values()) or {None}))
        if num_generations > smallest:
            raise ValueError(f"num_generations={num_generations} is larger than the smallest domain's catalogue "
                             f"({smallest} items): a group cannot hold that many distinct items")
        self.generator = torch.Generator().manual_seed(seed)
        self._tables: dict[str, TrieTables] = {}
        self.history: dict[str, list[float]] = {"target_in_group": [], "duplicate_share": [], "injected_share": [],
                                                "seconds": []}

    def tables(self, device) -> TrieTables:
        key = str(device)
        if key not in self._tables:
            self._tables[key] = self.trie.tables(device)
        return self._tables[key]

    def __call__(self, prompts: Sequence[str], trainer) -> dict:
        return self.generate(trainer.accelerator.unwrap_model(trainer.model), prompts)

    def pop_stats(self) -> dict[str, float]:
        """Means of the per-batch statistics since the last call (``target_in_group``, ``duplicate_share``,
        ``seconds``), for the metrics log (:class:`rl.common.RolloutStatsLog`)."""
        out = {name: sum(v) / len(v) for name, v in self.history.items() if v}
        self.history = {name: [] for name in self.history}
        return out

    def generate(self, model, prompts: Sequence[str]) -> dict:
        """One completion per entry of ``prompts`` (G consecutive copies of each prompt)."""
        t0 = time.perf_counter()
        if len(prompts) % self.G:
            raise ValueError(f"{len(prompts)} prompts is not a multiple of num_generations={self.G}")
        unique = list(prompts[::self.G])
        for g, prompt in enumerate(unique):
            if any(p != prompt for p in prompts[g * self.G:(g + 1) * self.G]):
                raise ValueError("prompts must come in groups of num_generations identical entries (TRL's "
                                 "RepeatSampler order)")
        unknown = [p for p in unique if p not in self.domain_of] if self.domain_of else []
        if unknown:
            raise KeyError(f"a prompt that is not in the rollout's training prompts: {unknown[0][-80:]!r}")
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            tables = self.tables(device)
            prompt_ids, completion_ids, items, ranks, groups = [], [], [], [], []
            for start in range(0, len(unique), self.batch_size):
                chunk = unique[start:start + self.batch_size]
                ids, mask = encode_prompts(self.tokenizer, chunk, device)
                roots = torch.tensor([self.trie.root(self.domain_of.get(p)) for p in chunk], dtype=torch.long)
                if self.mode == "beam":
                    res = trie_beam_search(model, ids, mask, tables, roots.to(device), self.G, self.eos)
                    tokens, leaves = res.tokens, res.leaves
                else:
                    tokens, leaves, _ = trie_sample(model, ids, mask, tables, roots, self.G, self.eos,
                                                         self.temperature, self.generator)
                if bool((leaves < 0).any()):
                    raise RuntimeError("a rollout left the trie (a bug: every beam/sample must be a real item)")
                rows = tables.leaf_item[leaves].cpu()
                for j in range(len(chunk)):
                    p_ids = ids[j][mask[j].bool()].tolist()
                    for s in range(self.G):
                        prompt_ids.append(p_ids)
                        completion_ids.append(tokens[j, s].tolist() + [self.eos])
                        items.append(self.catalogue.item_ids[int(rows[j, s])])
                        groups.append(start + j)
            in_group = [0.0] * len(items)
            injected = 0
            for g, prompt in enumerate(unique):
                want = self.targets.get(prompt)
                members = range(g * self.G, (g + 1) * self.G)
                hit = want is not None and any(items[i] == want for i in members)
                in_group[members.start:members.stop] = [float(hit)] * self.G
                if self.inject_target and not hit:  # beams come best first: the last is the lowest
                    last = members.stop - 1
                    items[last] = want
                    completion_ids[last] = self.tokenizer.convert_tokens_to_ids(self.catalogue.sid_tokens(want)) + \
                        [self.eos]
                    injected += 1
            logprobs = completion_logprobs(model, prompt_ids, completion_ids, self.pad)
        finally:
            model.train(was_training)
        for g in range(len(unique)):  # rank in the group by sequence log-prob (0 = best; ties by position)
            sums = [sum(logprobs[i]) for i in range(g * self.G, (g + 1) * self.G)]
            order = sorted(range(self.G), key=lambda i: (-sums[i], i))
            rank = [0] * self.G
            for r, i in enumerate(order):
                rank[i] = r
            ranks.extend(rank)
        distinct = sum(len(set(items[g * self.G:(g + 1) * self.G])) for g in range(len(unique)))
        stats = {"target_in_group": sum(in_group[::self.G]) / len(unique),
                 "duplicate_share": 1.0 - distinct / len(items), "injected_share": injected / len(unique),
                 "seconds": time.perf_counter() - t0}
        for name, value in stats.items():
            self.history[name].append(value)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs,
                "item_id": items, "group_id": groups, "group_rank": ranks, "in_group": in_group}
