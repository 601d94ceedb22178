"""Domain-adaptive RQ-VAE SID tokeniser (GenCDR, shared/reference/SEEDS_DIGEST.md §001): ``method: rqvae_domain``.

Three stages, trained on one CPU thread (small matmuls; see :mod:`tokenization.fsq` for why), seeded:

1. **Universal RQ-VAE** on every item. MLP encoder z = E(x) (d -> hidden -> latent), L residual codebooks of K
   vectors: r_0 = z, c_m = argmin_k ||r_m − e^m_k||, r_{m+1} = r_m − e^m_{c_m}, ẑ = Σ_m e^m_{c_m}; MLP decoder
   x̂ = D(z + sg[ẑ − z]) (straight-through). Loss

       ||x − x̂||² + Σ_m ||sg[r_m] − e_{c_m}||² + β ||r_m − sg[e_{c_m}]||² + λ L_MTM.

   Codebooks start as RQ k-means (faiss, :mod:`tokenization.rq_kmeans`) of the untrained encoder's latents; after
   every epoch each code no batch of that epoch chose is **reset** to a randomly chosen current residual of its
   level (level by level, so level m+1 sees the residuals of the repaired level m; its Adam moments are zeroed).
   **Masked code modelling** (L_MTM): per item a random non-empty, non-full subset of the L positions is masked;
   the visible positions enter a small context model as their codebook vectors e_{c_m}, masked ones as a learned
   mask vector, plus a position vector; an MLP over the L positions outputs one vector h_m per position and the
   logits over level m's codes are tied to that codebook, logit_k = −||h_m − e^m_k||² (up to a per-row constant).
   L_MTM = −mean log p(c_m | visible codes) over the masked positions. **Gradient path**: L_MTM reaches the
   codebooks directly, through both the input (visible e_{c_m}) and the output (tied logits) embeddings; it reaches
   the encoder only through them: the codebooks it moves change the argmin assignments and the commitment target
   β||r_m − sg[e]||² the encoder follows. ``mtm_encoder_grad=True`` also feeds the visible positions
   straight-through, q_m = e_{c_m} + r_m − sg[r_m] (same value, gradient into the encoder's residuals); on amazon18
   that collapsed the first level (the easiest way to make codes predictable is to use fewer of them: level-1 Gini
   0.75 vs 0.32, reconstruction MSE 0.53 vs 0.42 after 50 epochs), so it is off by default. Then encoder,
   codebooks and decoder are frozen.
2. **One LoRA per domain** on both encoder linears, h = W_0 x + (α/r) B_d A_d x (A_d random, B_d = 0 at the start,
   so training starts from the universal encoder); each domain's LoRA is trained alone on that domain's items with
   reconstruction + β·commitment through the frozen quantiser and decoder.
3. **Item-level router with a VIB**, one per domain: (μ, log σ²) = f(x), s = μ + σ·ε in training (s = μ when
   encoding), w = σ(g(s)) ∈ (0, 1), z = w·E(x) + (1 − w)·E_d(x); trained with reconstruction + β·commitment +
   γ·KL(N(μ, σ²) || N(0, I)); encoder, LoRAs, codebooks and decoder frozen.

Every item is finally encoded with its own domain's LoRA and router and quantised by the shared frozen codebooks, so
all domains share one token space. An item of a domain without a LoRA cannot be encoded (:func:`domain_indices`
raises a one-line UserError naming the domain). The whole state (including the domain names in LoRA order) is
saved as arrays under ``codebooks/rqvae.*.npy`` (:func:`state_arrays`, :func:`model_from_arrays`).

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(300, 16)).astype("float32")
>>> cfg = RQVAEConfig(levels=2, codebook_size=8, hidden=16, latent=8, epochs=2, lora_epochs=1, router_epochs=1)
>>> model, info = fit_rqvae_domain(x, ["A"] * 150 + ["B"] * 150, cfg, seed=0, progress=False)
>>> encode(model, x, domain_indices(model, ["A"] * 150 + ["B"] * 150)).codes.shape
(300, 2)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from data_builders.cli import user_error

log = logging.getLogger(__name__)

ENCODE_CHUNK = 65536
LOGVAR_CLAMP = 10.0  # router posterior log-variance kept in [-10, 10] (exp() stays finite)


@dataclass
class RQVAEConfig:
    """Settings of the three stages (BuildArgs ``rqvae_*`` keys; ``levels``/``codebook_size``/``kmeans_iters``
    shared with the other RQ methods)."""

    levels: int = 3
    codebook_size: int = 256
    hidden: int = 256  # encoder / decoder / MTM context model width
    latent: int = 64
    beta: float = 0.25  # commitment weight
    mtm_weight: float = 0.1  # λ of the masked code modelling loss (0 = off)
    mtm_mask_prob: float = 0.5  # each position masked with this probability (at least one masked, one visible)
    mtm_encoder_grad: bool = False  # also back-propagate L_MTM into the encoder (straight-through inputs); see above
    epochs: int = 100
    batch_size: int = 512
    lr: float = 1.0e-3
    kmeans_iters: int = 20  # codebook initialisation
    lora_rank: int = 8
    lora_alpha: float = 16.0  # LoRA output scaled by alpha / rank
    lora_epochs: int = 20
    router_hidden: int = 128
    router_latent: int = 16
    router_epochs: int = 20
    vib_weight: float = 1.0e-3  # γ of KL(q(s|x) || N(0, I))


# ----------------------------------------------------------------------------------------------------------- modules


class LoRALinear(nn.Module):
    """A linear layer with one low-rank adapter per domain: ``forward(x, d)`` = W_0 x + b + scale · B_d A_d x;
    ``d = None`` is the universal (frozen-base) layer."""

    def __init__(self, d_in: int, d_out: int, n_domains: int, rank: int, scale: float):
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.lora_A = nn.ParameterList([nn.Parameter(torch.randn(rank, d_in) / math.sqrt(d_in))
                                        for _ in range(n_domains)])
        self.lora_B = nn.ParameterList([nn.Parameter(torch.zeros(d_out, rank)) for _ in range(n_domains)])
        self.register_buffer("lora_scale", torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor, domain: int | None = None) -> torch.Tensor:
        y = self.base(x)
        if domain is None:
            return y
        return y + self.lora_scale * F.linear(F.linear(x, self.lora_A[domain]), self.lora_B[domain])

    def adapter(self, domain: int) -> list[nn.Parameter]:
        return [self.lora_A[domain], self.lora_B[domain]]


class Encoder(nn.Module):
    """x [B, d] -> z [B, latent]: LoRALinear -> GELU -> LoRALinear."""

    def __init__(self, dim: int, hidden: int, latent: int, n_domains: int, rank: int, scale: float):
        super().__init__()
        self.l1 = LoRALinear(dim, hidden, n_domains, rank, scale)
        self.l2 = LoRALinear(hidden, latent, n_domains, rank, scale)

    def forward(self, x: torch.Tensor, domain: int | None = None) -> torch.Tensor:
        return self.l2(F.gelu(self.l1(x, domain)), domain)

    def base_parameters(self) -> list[nn.Parameter]:
        return [*self.l1.base.parameters(), *self.l2.base.parameters()]

    def adapter(self, domain: int) -> list[nn.Parameter]:
        return [*self.l1.adapter(domain), *self.l2.adapter(domain)]


class Router(nn.Module):
    """Item-level gate with a variational information bottleneck: x -> (w ∈ (0, 1), KL to N(0, I))."""

    def __init__(self, dim: int, hidden: int, latent: int):
        super().__init__()
        self.posterior = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * latent))
        self.gate = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.posterior(x).chunk(2, dim=-1)
        logvar = logvar.clamp(-LOGVAR_CLAMP, LOGVAR_CLAMP)
        s = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        w = torch.sigmoid(self.gate(s)).squeeze(-1)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum(-1)
        return w, kl


class MaskedCodeModel(nn.Module):
    """Context model of L_MTM: position vectors [L, latent] + MLP over the L positions -> tied logits [B, L, K]."""

    def __init__(self, levels: int, latent: int, hidden: int):
        super().__init__()
        self.mask_vector = nn.Parameter(torch.zeros(latent))
        self.position = nn.Parameter(0.02 * torch.randn(levels, latent))
        self.net = nn.Sequential(nn.Linear(levels * latent, hidden), nn.GELU(), nn.Linear(hidden, levels * latent))

    def forward(self, q: torch.Tensor, mask: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
        """q [B, L, latent] (visible positions' quantised vectors), mask [B, L] bool (True = hidden), codebooks
        [L, K, latent] -> logits [B, L, K] = −||h − e||² + ||h||² (the row constant dropped)."""
        b, levels, latent = q.shape
        inp = torch.where(mask[..., None], self.mask_vector.expand_as(q), q) + self.position
        h = self.net(inp.reshape(b, levels * latent)).view(b, levels, latent)
        return 2.0 * torch.einsum("bld,lkd->blk", h, codebooks) - (codebooks ** 2).sum(-1)[None]


@dataclass
class Quantized:
    """One residual-quantisation pass: codes [B, L]; z_hat = Σ parts (exact sum, no straight-through); z_st = z +
    sg[z_hat − z]; q_st [B, L, latent] per-level straight-through vectors (value e_c); losses summed over levels."""

    codes: torch.Tensor
    parts: torch.Tensor
    z_hat: torch.Tensor
    z_st: torch.Tensor
    q_st: torch.Tensor
    codebook_loss: torch.Tensor
    commit_loss: torch.Tensor
    last_residual: torch.Tensor


class DomainRQVAE(nn.Module):
    """Encoder with per-domain LoRAs, residual codebooks, decoder, MTM context model and per-domain routers."""

    def __init__(self, dim: int, domains: Sequence[str], cfg: RQVAEConfig):
        super().__init__()
        self.domains = [str(d) for d in domains]
        n = len(self.domains)
        self.encoder = Encoder(dim, cfg.hidden, cfg.latent, n, cfg.lora_rank, cfg.lora_alpha / cfg.lora_rank)
        self.decoder = nn.Sequential(nn.Linear(cfg.latent, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, dim))
        self.codebooks = nn.Parameter(torch.zeros(cfg.levels, cfg.codebook_size, cfg.latent))
        self.mtm = MaskedCodeModel(cfg.levels, cfg.latent, cfg.hidden)
        self.routers = nn.ModuleList([Router(dim, cfg.router_hidden, cfg.router_latent) for _ in range(n)])
        self.register_buffer("layout", torch.tensor([dim, cfg.hidden, cfg.latent, cfg.levels, cfg.codebook_size,
                                                     cfg.lora_rank, cfg.router_hidden, cfg.router_latent, n]))

    @property
    def levels(self) -> int:
        return self.codebooks.shape[0]

    def quantize(self, z: torch.Tensor) -> Quantized:
        """Greedy residual quantisation of z [B, latent] with the codebook and commitment terms of every level."""
        r = z
        codes, parts, q_st = [], [], []
        codebook_loss = commit_loss = z.new_zeros(())
        for m in range(self.levels):
            e = self.codebooks[m]
            with torch.no_grad():
                dist = (e ** 2).sum(1)[None, :] - 2.0 * r @ e.T  # ||r||² is constant per row
                c = dist.argmin(1)
            ec = e[c]
            codebook_loss = codebook_loss + ((r.detach() - ec) ** 2).sum(1).mean()
            commit_loss = commit_loss + ((r - ec.detach()) ** 2).sum(1).mean()
            q_st.append(ec + (r - r.detach()))
            if m == self.levels - 1:
                last = r
            r = r - ec.detach()
            codes.append(c)
            parts.append(ec)
        parts_t = torch.stack(parts, 1)
        z_hat = parts_t.sum(1)
        return Quantized(torch.stack(codes, 1), parts_t, z_hat, z + (z_hat - z).detach(), torch.stack(q_st, 1),
                         codebook_loss, commit_loss, last)

    def routed_latent(self, x: torch.Tensor, domain: int, sample: bool) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
        """z = w·E(x) + (1 − w)·E_d(x) for items of ``domain``; returns (z, w, kl)."""
        w, kl = self.routers[domain](x, sample)
        return w[:, None] * self.encoder(x) + (1.0 - w[:, None]) * self.encoder(x, domain), w, kl


def state_arrays(model: DomainRQVAE) -> dict[str, np.ndarray]:
    """The state dict as numpy arrays plus ``domains`` (names in LoRA/router order, a unicode array)."""
    out = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    out = {k: v.astype(np.float32) if v.dtype.kind == "f" else v.astype(np.int64) for k, v in out.items()}
    out["domains"] = np.array(model.domains, dtype=str)
    return out


def model_from_arrays(arrays: dict[str, np.ndarray], where: str = "rqvae state") -> DomainRQVAE:
    """Inverse of :func:`state_arrays` (the keys without the ``rqvae.`` prefix)."""
    if "layout" not in arrays or "domains" not in arrays:
        raise user_error(where, "no rqvae_domain weights saved (layout/domains missing); rebuild the SIDs")
    dim, hidden, latent, levels, k, rank, r_hidden, r_latent, n = (int(v) for v in arrays["layout"])
    domains = [str(d) for d in arrays["domains"].tolist()]
    if len(domains) != n:
        raise user_error(where, f"{len(domains)} domain names for {n} LoRAs; rebuild the SIDs")
    scale = float(np.asarray(arrays["encoder.l1.lora_scale"]).reshape(-1)[0])  # saved 0-d tensors come back [1]
    cfg = RQVAEConfig(levels=levels, codebook_size=k, hidden=hidden, latent=latent, lora_rank=rank,
                      lora_alpha=scale * rank, router_hidden=r_hidden, router_latent=r_latent)
    model = DomainRQVAE(dim, domains, cfg)
    shapes = {key: v.shape for key, v in model.state_dict().items()}
    if set(shapes) != set(arrays) - {"domains"}:
        raise user_error(where, f"saved rqvae arrays {sorted((set(arrays) - {'domains'}) ^ set(shapes))[:3]} do not "
                                "match the net's layout; rebuild the SIDs")
    state = {}
    for key, shape in shapes.items():
        v = np.asarray(arrays[key])
        if v.size != int(np.prod(shape)):
            raise user_error(where, f"rqvae.{key}.npy has shape {v.shape}, the net needs {tuple(shape)}; rebuild the "
                                    "SIDs")
        state[key] = torch.from_numpy(v.reshape(tuple(shape)).copy())
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------------- domains


def domain_indices(model: DomainRQVAE, domains: Sequence[str], where: str = "rqvae_domain tokeniser",
                   item_ids: Sequence[str] | None = None) -> np.ndarray:
    """Item domains -> LoRA indices; a UserError naming the first domain without a trained LoRA."""
    index = {d: i for i, d in enumerate(model.domains)}
    unknown = [(n, d) for n, d in enumerate(domains) if d not in index]
    if unknown:
        n, d = unknown[0]
        count = sum(1 for _, u in unknown if u == d)
        example = f", e.g. item {item_ids[n]!r}" if item_ids is not None else ""
        raise user_error(where, f"{count} item(s) of domain {d!r}{example}, but this rqvae_domain tokeniser has a "
                                f"trained LoRA + router only for {model.domains}; rebuild the SIDs with that "
                                "domain's items (python -m tokenization.build)")
    return np.array([index[d] for d in domains], dtype=np.int64)


# ------------------------------------------------------------------------------------------------------- training


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    perm = torch.from_numpy(rng.permutation(n))
    for start in range(0, n, batch_size):
        yield perm[start:start + batch_size]


def sample_mask(batch: int, levels: int, prob: float) -> torch.Tensor:
    """[B, L] bool, True = masked: each position with ``prob``, at least one masked and (L ≥ 2) one visible."""
    u = torch.rand(batch, levels)
    mask = u < prob
    rows = torch.arange(batch)
    none = ~mask.any(1)
    mask[rows[none], u[none].argmin(1)] = True
    full = mask.all(1)
    if levels > 1:
        mask[rows[full], u[full].argmax(1)] = False
    return mask


def mtm_loss(model: DomainRQVAE, q: Quantized, prob: float, encoder_grad: bool = False
             ) -> tuple[torch.Tensor, float]:
    """L_MTM = −mean over masked positions of log p(c_m | visible codes); also the masked-code accuracy. The visible
    codes enter as their codebook vectors (gradient into the codebooks) or, with ``encoder_grad``, straight-through
    (same value, gradient into the codebooks and the encoder's residuals)."""
    mask = sample_mask(len(q.codes), model.levels, prob)
    logits = model.mtm(q.q_st if encoder_grad else q.parts, mask, model.codebooks)  # [B, L, K]
    loss = F.cross_entropy(logits[mask], q.codes[mask])
    accuracy = float((logits[mask].argmax(-1) == q.codes[mask]).float().mean())
    return loss, accuracy


@torch.no_grad()
def init_codebooks(model: DomainRQVAE, x: torch.Tensor, seed: int, kmeans_iters: int) -> None:
    """RQ k-means (faiss) of the current universal latents of ``x``."""
    from tokenization import rq_kmeans

    z = model.encoder(x).numpy()
    books = rq_kmeans.fit_rq_kmeans(z, model.levels, model.codebooks.shape[1], seed, n_iter=kmeans_iters)
    model.codebooks.data.copy_(torch.from_numpy(books.centroids))


@torch.no_grad()
def reset_dead_codes(model: DomainRQVAE, x: torch.Tensor, counts: np.ndarray, rng: np.random.Generator,
                     optimizer: torch.optim.Optimizer | None = None) -> list[int]:
    """Codes with ``counts[m, k] == 0`` (no use over the window) move to randomly chosen current residuals of their
    level (universal latents of ``x``, level by level). Returns how many codes were reset per level."""
    r = model.encoder(x)
    state = optimizer.state.get(model.codebooks, {}) if optimizer is not None else {}
    reset = []
    for m in range(model.levels):
        dead = np.flatnonzero(counts[m] == 0)
        if dead.size:
            rows = rng.choice(len(r), size=dead.size, replace=dead.size > len(r))
            idx = torch.from_numpy(dead)
            model.codebooks.data[m, idx] = r[torch.from_numpy(rows)]
            for key in ("exp_avg", "exp_avg_sq"):  # no stale Adam momentum drags the fresh code away
                if key in state:
                    state[key][m, idx] = 0.0
        e = model.codebooks[m]
        r = r - e[((e ** 2).sum(1)[None, :] - 2.0 * r @ e.T).argmin(1)]
        reset.append(int(dead.size))
    return reset


def _recon(model: DomainRQVAE, x: torch.Tensor, q: Quantized) -> torch.Tensor:
    return ((model.decoder(q.z_st) - x) ** 2).sum(1).mean()


def train_universal(model: DomainRQVAE, x: torch.Tensor, cfg: RQVAEConfig, seed: int, rng: np.random.Generator,
                    progress: bool = True) -> dict:
    """Stage 1 (see module docstring). Returns per-epoch losses and dead-code resets."""
    model.requires_grad_(False)
    params = [*model.encoder.base_parameters(), *model.decoder.parameters(), model.codebooks,
              *model.mtm.parameters()]
    for p in params:
        p.requires_grad_(True)
    init_codebooks(model, x, seed, cfg.kmeans_iters)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    use_mtm = cfg.mtm_weight > 0 and model.levels > 1
    history: list[dict] = []
    bar = tqdm(range(cfg.epochs), desc="rqvae universal", leave=False, disable=not progress)
    for _ in bar:
        counts = np.zeros(tuple(model.codebooks.shape[:2]), dtype=np.int64)
        sums = {"recon": 0.0, "codebook": 0.0, "commit": 0.0, "mtm": 0.0, "mtm_accuracy": 0.0}
        for idx in _batches(len(x), cfg.batch_size, rng):
            xb = x[idx]
            q = model.quantize(model.encoder(xb))
            recon = _recon(model, xb, q)
            loss = recon + q.codebook_loss + cfg.beta * q.commit_loss
            parts = {"recon": recon.item(), "codebook": q.codebook_loss.item(), "commit": q.commit_loss.item()}
            if use_mtm:
                mtm, accuracy = mtm_loss(model, q, cfg.mtm_mask_prob, cfg.mtm_encoder_grad)
                loss = loss + cfg.mtm_weight * mtm
                parts.update(mtm=mtm.item(), mtm_accuracy=accuracy)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for key, value in parts.items():
                sums[key] += value * len(xb)
            for m in range(model.levels):
                counts[m] += np.bincount(q.codes[:, m].numpy(), minlength=counts.shape[1])
        row = {key: value / len(x) for key, value in sums.items()}
        row["dead_codes_reset"] = reset_dead_codes(model, x, counts, rng, opt)
        history.append(row)
        bar.set_postfix(recon=f"{row['recon']:.4f}", mtm=f"{row['mtm']:.3f}", reset=sum(row["dead_codes_reset"]))
    model.requires_grad_(False)
    return {"history": history, "mtm": use_mtm}


def train_lora(model: DomainRQVAE, x: torch.Tensor, domain: int, cfg: RQVAEConfig, rng: np.random.Generator,
               progress: bool = True) -> list[float]:
    """Stage 2 for one domain: only its LoRA trains (reconstruction + β·commitment, frozen quantiser/decoder)."""
    model.requires_grad_(False)
    params = model.encoder.adapter(domain)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    losses = []
    for _ in tqdm(range(cfg.lora_epochs), desc=f"rqvae lora {model.domains[domain]}", leave=False,
                  disable=not progress):
        total = 0.0
        for idx in _batches(len(x), cfg.batch_size, rng):
            xb = x[idx]
            q = model.quantize(model.encoder(xb, domain))
            recon = _recon(model, xb, q)
            loss = recon + cfg.beta * q.commit_loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += recon.item() * len(xb)
        losses.append(total / len(x))
    model.requires_grad_(False)
    return losses


def train_router(model: DomainRQVAE, x: torch.Tensor, domain: int, cfg: RQVAEConfig, rng: np.random.Generator,
                 progress: bool = True) -> dict[str, list[float]]:
    """Stage 3 for one domain: only its router trains (reconstruction + β·commitment + γ·KL)."""
    model.requires_grad_(False)
    router = model.routers[domain]
    router.requires_grad_(True)
    opt = torch.optim.Adam(router.parameters(), lr=cfg.lr)
    with torch.no_grad():  # both latents are frozen: computed once
        z_u, z_d = model.encoder(x), model.encoder(x, domain)
    out: dict[str, list[float]] = {"recon": [], "kl": [], "weight": []}
    for _ in tqdm(range(cfg.router_epochs), desc=f"rqvae router {model.domains[domain]}", leave=False,
                  disable=not progress):
        sums = np.zeros(3)
        for idx in _batches(len(x), cfg.batch_size, rng):
            xb = x[idx]
            w, kl = router(xb, sample=True)
            z = w[:, None] * z_u[idx] + (1.0 - w[:, None]) * z_d[idx]
            q = model.quantize(z)
            recon = _recon(model, xb, q)
            loss = recon + cfg.beta * q.commit_loss + cfg.vib_weight * kl.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sums += np.array([recon.item(), kl.mean().item(), w.mean().item()]) * len(xb)
        for key, value in zip(out, sums / len(x)):
            out[key].append(float(value))
    model.requires_grad_(False)
    return out


def fit_rqvae_domain(embeddings: np.ndarray, item_domains: Sequence[str], cfg: RQVAEConfig, seed: int = 0,
                     sample_size: int | None = None, progress: bool = True) -> tuple[DomainRQVAE, dict]:
    """Train all three stages on embeddings [N, d] whose rows belong to ``item_domains`` [N] (CPU, one thread,
    seeded). Domains get LoRAs in sorted order. Returns (model, info: per-stage losses, dead-code resets)."""
    if len(item_domains) != len(embeddings):
        raise ValueError(f"{len(item_domains)} domains for {len(embeddings)} embedding rows")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(embeddings, np.asarray(item_domains, dtype=object), cfg, seed, sample_size, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(embeddings, item_domains, cfg, seed, sample_size, progress) -> tuple[DomainRQVAE, dict]:
    from tokenization.rq_kmeans import sample_row_indices

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = sample_row_indices(len(embeddings), sample_size, seed)
    x = torch.from_numpy(np.ascontiguousarray(embeddings[rows], dtype=np.float32))
    doms = item_domains[rows]
    names = sorted(set(item_domains.tolist()))
    missing = sorted(set(names) - set(doms.tolist()))
    if missing:  # every item is encoded with its domain's LoRA: each domain needs training rows
        raise user_error("sample_size", f"the {len(rows)} sampled rows hold no item of domain {missing[0]!r}, so it "
                                        "would get no LoRA + router; raise sample_size or use 0 (all items)")
    model = DomainRQVAE(x.shape[1], names, cfg)
    stage1 = train_universal(model, x, cfg, seed, rng, progress)
    h = stage1["history"]
    resets = np.array([row["dead_codes_reset"] for row in h])  # [epochs, L]
    info: dict = {
        "domains_with_lora": names,
        "stage1_universal": {
            "epochs": cfg.epochs, "mtm": stage1["mtm"],
            **{f"{key}_first": round(h[0][key], 6) for key in ("recon", "codebook", "commit", "mtm", "mtm_accuracy")},
            **{f"{key}_last": round(h[-1][key], 6) for key in ("recon", "codebook", "commit", "mtm", "mtm_accuracy")},
            "dead_codes_reset_per_level": resets.sum(0).tolist(),
            "dead_codes_reset_last_epoch": resets[-1].tolist(),
        },
        "stage2_lora": {}, "stage3_router": {},
    }
    for d, name in enumerate(names):
        xd = x[torch.from_numpy(np.flatnonzero(doms == name))]
        losses = train_lora(model, xd, d, cfg, rng, progress)
        info["stage2_lora"][name] = {"items": len(xd), "recon_first": round(losses[0], 6),
                                     "recon_last": round(losses[-1], 6)}
    for d, name in enumerate(names):
        xd = x[torch.from_numpy(np.flatnonzero(doms == name))]
        r = train_router(model, xd, d, cfg, rng, progress)
        info["stage3_router"][name] = {
            "recon_first": round(r["recon"][0], 6), "recon_last": round(r["recon"][-1], 6),
            "kl_first": round(r["kl"][0], 6), "kl_last": round(r["kl"][-1], 6),
            "train_weight_last": round(r["weight"][-1], 6)}
    s1 = info["stage1_universal"]
    log.info("rqvae universal: recon %.4f -> %.4f, mtm %.3f -> %.3f, dead codes reset per level %s", s1["recon_first"],
             s1["recon_last"], s1["mtm_first"], s1["mtm_last"], s1["dead_codes_reset_per_level"])
    model.eval()
    return model, info


# ------------------------------------------------------------------------------------------------------- encoding


@dataclass
class Encoded:
    """codes int64 [N, L]; z the routed latents [N, latent]; z_hat = Σ codebook vectors [N, latent]; last_residual
    the residual the last level quantises [N, latent]; weight the router's w [N]; universal_codes the codes of
    E(x) alone (no LoRA, no router), for comparison."""

    codes: np.ndarray
    z: np.ndarray
    z_hat: np.ndarray
    last_residual: np.ndarray
    weight: np.ndarray
    universal_codes: np.ndarray = field(repr=False)


@torch.no_grad()
def encode(model: DomainRQVAE, embeddings: np.ndarray, domain_index: np.ndarray) -> Encoded:
    """Deterministic encoding: each row through its domain's LoRA and router (mean of the VIB posterior)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        z = torch.empty(len(x), model.codebooks.shape[2])
        w = torch.empty(len(x))
        for d in np.unique(domain_index):
            rows = torch.from_numpy(np.flatnonzero(domain_index == d))
            for start in range(0, len(rows), ENCODE_CHUNK):
                chunk = rows[start:start + ENCODE_CHUNK]
                z[chunk], w[chunk], _ = model.routed_latent(x[chunk], int(d), sample=False)
        out = [model.quantize(z[s:s + ENCODE_CHUNK]) for s in range(0, len(z), ENCODE_CHUNK)]
        universal = [model.quantize(model.encoder(x[s:s + ENCODE_CHUNK])).codes for s in range(0, len(x), ENCODE_CHUNK)]
        return Encoded(
            torch.cat([q.codes for q in out]).numpy() if out else np.zeros((0, model.levels), dtype=np.int64),
            z.numpy(), torch.cat([q.z_hat for q in out]).numpy() if out else np.zeros((0, z.shape[1]), np.float32),
            torch.cat([q.last_residual for q in out]).numpy() if out else np.zeros((0, z.shape[1]), np.float32),
            w.numpy(), torch.cat(universal).numpy() if universal else np.zeros((0, model.levels), dtype=np.int64))
    finally:
        torch.set_num_threads(threads)


def codes_to_latent(model: DomainRQVAE, codes: np.ndarray) -> np.ndarray:
    """ẑ = Σ_m e^m_{c_m}: codes [N, L] -> [N, latent]."""
    books = model.codebooks.detach().numpy()
    return sum(books[m][codes[:, m]] for m in range(codes.shape[1]))


def last_level_cost(model: DomainRQVAE, last_residual: np.ndarray) -> np.ndarray:
    """Squared distance of each last-level residual [M, latent] to every last-level code -> [M, K]."""
    e = model.codebooks[-1].detach().numpy()
    r = np.asarray(last_residual, dtype=np.float32)
    return np.maximum((r ** 2).sum(1)[:, None] - 2.0 * r @ e.T + (e ** 2).sum(1)[None, :], 0.0)


@torch.no_grad()
def reconstruction_errors(model: DomainRQVAE, embeddings: np.ndarray, codes: np.ndarray) -> list[float]:
    """Mean ||x − D(Σ_{m<k} e^m_{c_m})||² for k = 0..L (entry 0 decodes the zero latent)."""
    x = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    books = model.codebooks
    partial = torch.zeros(len(x), books.shape[2])
    errors = [float(((model.decoder(partial) - x) ** 2).sum(1).mean())]
    for m in range(codes.shape[1]):
        partial = partial + books[m][torch.from_numpy(codes[:, m])]
        errors.append(float(((model.decoder(partial) - x) ** 2).sum(1).mean()))
    return errors
