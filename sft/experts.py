"""GenCDR's adapters (seed 001): N universal LoRA experts mixed by a trainable gate, plus one LoRA per domain.

Every targeted ``nn.Linear`` of the decoder (``q_proj`` ... ``down_proj``) becomes an :class:`ExpertLinear`::

    y = W x  +  s_u · Σ_e g_e(x) · B_e A_e x   (universal experts, gate g = softmax(W_g x) per token, or 1/N)
             +  s_d · B_d A_d x                (the row's domain LoRA, when the route names a domain)

Why not peft: peft's gated mixture is X-LoRA (``XLoraConfig``), which mixes *already trained* adapters loaded from
directories, needs a second forward pass per step to compute its scalings, and trains only the classifier; GenCDR
trains the experts and the gate together (phase 1) and then trains domain LoRAs with the experts frozen (phase 2).
peft's multi-adapter batches (``adapter_names``) select one adapter per row but cannot sum a gated mixture with a
domain adapter. So the layer is ours (a few lines), and stays a drop-in for any HF decoder's linear layers.

Which adapters a forward uses is the model's :class:`Route` (``model.genrec_route``), set with :func:`routed`:
``universal`` on/off and one domain index per row (``-1`` = no domain adapter). A batch may mix domains; a
``[B]`` route on a ``[B*K]`` batch (beam search expands each user to K consecutive rows) is repeated per user.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

GATES = ("learned", "average")


@dataclass
class Route:
    """What the next forward passes use: the universal experts, and the domain adapter of each row."""

    universal: bool = True
    domains: torch.Tensor | None = None  # int64 [B]: index into the model's domain list, -1 = none
    gate_log: list = field(default_factory=list)  # when ``record_gate``: each layer's mean gate weights [E]
    record_gate: bool = False


class ExpertLinear(nn.Module):
    """A linear layer with universal LoRA experts (+ gate) and named domain LoRAs; see the module docstring."""

    def __init__(self, base: nn.Linear, route: Route, n_experts: int, rank: int, alpha: float, dropout: float,
                 gate: str):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"gate={gate!r}; choose from {GATES}")
        self.base, self.route, self.gate_mode = base, route, gate
        self.in_features, self.out_features = base.in_features, base.out_features
        self.n_experts, self.rank = n_experts, rank
        self.scale = alpha / rank if rank else 0.0
        self.drop = nn.Dropout(dropout)
        dev = base.weight.device
        if n_experts:
            a = torch.empty(n_experts, rank, self.in_features, device=dev)
            for e in range(n_experts):  # peft's LoRA init: A ~ kaiming-uniform, B = 0 (starts as the base layer)
                nn.init.kaiming_uniform_(a[e], a=math.sqrt(5))
            self.expert_a = nn.Parameter(a)
            self.expert_b = nn.Parameter(torch.zeros(n_experts, self.out_features, rank, device=dev))
            self.gate = nn.Linear(self.in_features, n_experts, device=dev) if gate == "learned" else None
            if self.gate is not None:
                nn.init.zeros_(self.gate.weight)  # uniform gate at the start: each expert gets the same share
                nn.init.zeros_(self.gate.bias)
        self.domain_a = nn.ParameterList()
        self.domain_b = nn.ParameterList()
        self.domain_scale = 0.0

    def add_domains(self, n: int, rank: int, alpha: float) -> None:
        """``n`` domain LoRAs (rank ``rank``), initialised like peft's LoRA (B = 0: no effect before training)."""
        dev = self.base.weight.device
        self.domain_scale = alpha / rank
        for _ in range(n):
            a = torch.empty(rank, self.in_features, device=dev)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.domain_a.append(nn.Parameter(a))
            self.domain_b.append(nn.Parameter(torch.zeros(self.out_features, rank, device=dev)))

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """[..., E] mixture weights of the universal experts for each token (sum to one)."""
        if self.gate is None:
            return x.new_full((*x.shape[:-1], self.n_experts), 1.0 / self.n_experts)
        return torch.softmax(self.gate(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        route = self.route
        if route.universal and self.n_experts:
            g = self.gate_weights(x)  # [..., E]
            if route.record_gate:
                route.gate_log.append(g.detach().reshape(-1, self.n_experts).mean(0))
            h = torch.einsum("...i,eri->...er", self.drop(x), self.expert_a) * g.unsqueeze(-1)  # [..., E, r]
            y = y + self.scale * torch.einsum("...er,eor->...o", h, self.expert_b)
        if route.domains is not None and len(self.domain_a):
            domains = route.domains.to(x.device)
            if domains.shape[0] != x.shape[0]:  # [B] route on [B*K] beam rows (user-major)
                if x.shape[0] % domains.shape[0]:
                    raise ValueError(f"route has {domains.shape[0]} rows for a batch of {x.shape[0]}")
                domains = domains.repeat_interleave(x.shape[0] // domains.shape[0])
            xd = self.drop(x)
            delta = torch.zeros_like(y)
            for d in torch.unique(domains).tolist():
                if d < 0:
                    continue
                rows = domains == d
                delta[rows] = (xd[rows] @ self.domain_a[d].T) @ self.domain_b[d].T
            y = y + self.domain_scale * delta
        return y


def target_linears(model, targets: list[str]) -> list[tuple[nn.Module, str, nn.Linear]]:
    """``(parent, attribute, layer)`` for every ``nn.Linear`` whose name ends with one of ``targets``."""
    found = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear) and child_name in targets:
                found.append((module, child_name, child))
    if not found:
        raise ValueError(f"no nn.Linear named {targets} in the model; set target_modules to its layer names")
    return found


def attach_experts(model, targets: list[str], n_experts: int, rank: int, alpha: float, dropout: float = 0.0,
                   gate: str = "learned") -> Route:
    """Replace each targeted linear layer by an :class:`ExpertLinear` (``n_experts`` may be 0: domain LoRAs only).
    Returns the shared :class:`Route` (also ``model.genrec_route``)."""
    if n_experts < 0 or (n_experts and rank < 1):
        raise ValueError(f"n_experts must be >= 0 and rank >= 1, got {n_experts}, {rank}")
    route = Route()
    for parent, attr, layer in target_linears(model, targets):
        setattr(parent, attr, ExpertLinear(layer, route, n_experts, rank, alpha, dropout, gate))
    model.genrec_route = route
    return route


def expert_layers(model) -> list[ExpertLinear]:
    return [m for m in model.modules() if isinstance(m, ExpertLinear)]


def add_domain_adapters(model, n_domains: int, rank: int, alpha: float) -> None:
    for layer in expert_layers(model):
        layer.add_domains(n_domains, rank, alpha)


@contextlib.contextmanager
def routed(model, universal: bool = True, domains: torch.Tensor | None = None):
    """Within the block, forwards of ``model`` use the universal experts (or not) and the rows' domain adapters."""
    route: Route = model.genrec_route
    saved = (route.universal, route.domains)
    route.universal, route.domains = universal, domains
    try:
        yield route
    finally:
        route.universal, route.domains = saved


def expert_state(model, part: str) -> dict[str, torch.Tensor]:
    """The parameters of one part: ``universal`` (experts + gate), ``domain:<i>`` (one domain's LoRA)."""
    out = {}
    for name, p in model.named_parameters():
        if part == "universal" and (".expert_" in name or (".gate." in name and ".base." not in name)):
            out[name] = p.detach().cpu().contiguous()
        elif part.startswith("domain:"):
            i = part.partition(":")[2]
            for kind in ("domain_a", "domain_b"):
                if name.endswith(f".{kind}.{i}"):
                    out[name.removesuffix(f".{i}") + ".0"] = p.detach().cpu().contiguous()
    return out


def load_domain_state(model, index: int, state: dict[str, torch.Tensor]) -> None:
    """Put one saved domain LoRA (keys ending ``.domain_a.0`` / ``.domain_b.0``) into slot ``index``."""
    params = dict(model.named_parameters())
    expected = {n.removesuffix(f".{index}") + ".0" for n in params if n.endswith(
        (f".domain_a.{index}", f".domain_b.{index}"))}
    if set(state) != expected:
        missing = sorted(expected - set(state))[:2] or sorted(set(state) - expected)[:2]
        raise ValueError(f"domain adapter does not fit the model's layers (e.g. {missing})")
    with torch.no_grad():
        for key, value in state.items():
            target = params[key.removesuffix(".0") + f".{index}"]
            if target.shape != value.shape:
                raise ValueError(f"domain adapter {key}: shape {tuple(value.shape)}, the model's is "
                                 f"{tuple(target.shape)} (another rank or base)")
            target.copy_(value)


def mean_gate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[E] average gate weights over layers and tokens for a batch (the report's expert-use line)."""
    route: Route = model.genrec_route
    route.gate_log, route.record_gate = [], True
    try:
        with torch.no_grad(), routed(model, universal=True, domains=None):
            model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        route.record_gate = False
    return torch.stack(route.gate_log).mean(0) if route.gate_log else torch.empty(0)
