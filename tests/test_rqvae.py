"""tokenization/rqvae.py (method ``rqvae_domain``, GenCDR domain-adaptive RQ-VAE): the universal RQ-VAE trains, its
codes round-trip, dead codes are reset, each domain's LoRA only changes that domain, the VIB router is a proper
gate, unknown domains are clear errors (also in tokenization.add_items), and the build CLI writes an artifact the
quality report reads. Tiny random data, seconds in all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_builders.cli import UserError
from tokenization import add_items as A
from tokenization import rqvae
from tokenization.artifact import load_sid_artifact
from tokenization.build import main as build_main
from tests.test_tokenization_build import TINY_CONFIG, make_tiny

CFG = rqvae.RQVAEConfig(levels=3, codebook_size=8, hidden=32, latent=8, epochs=30, batch_size=64, lr=3e-3,
                        kmeans_iters=5, lora_rank=2, lora_alpha=4.0, lora_epochs=5, router_hidden=16,
                        router_latent=4, router_epochs=5)
TINY_RQVAE = ["--method", "rqvae_domain", "--rqvae_hidden", "32", "--rqvae_latent", "8", "--rqvae_epochs", "8",
              "--rqvae_batch_size", "64", "--rqvae_lora_rank", "2", "--rqvae_lora_epochs", "3",
              "--rqvae_router_epochs", "3", "--rqvae_router_hidden", "16", "--rqvae_router_latent", "4",
              "--quality_pairs", "100"]


def data(n: int = 200, d: int = 16, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Clustered unit vectors; the two domains differ by an offset so their LoRAs have something to adapt."""
    rng = np.random.default_rng(seed)
    domains = ["A" if i % 2 else "B" for i in range(n)]
    x = rng.normal(size=(6, d))[rng.integers(0, 6, n)] + 0.3 * rng.normal(size=(n, d))
    x[np.array(domains) == "B", 0] += 2.0
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), domains


@pytest.fixture(scope="module")
def fitted():
    x, domains = data()
    model, info = rqvae.fit_rqvae_domain(x, domains, CFG, seed=0, progress=False)
    return x, domains, model, info


def test_universal_losses_decrease_and_every_stage_is_reported(fitted):
    *_, info = fitted
    s1 = info["stage1_universal"]
    assert s1["recon_last"] < 0.8 * s1["recon_first"], s1
    assert s1["mtm"] and s1["mtm_last"] < s1["mtm_first"], s1  # the context model learns the code co-occurrence
    assert info["domains_with_lora"] == ["A", "B"]
    for name in ("A", "B"):
        assert info["stage2_lora"][name]["items"] == 100 and info["stage3_router"][name]["kl_last"] >= 0


def test_mtm_gradient_reaches_the_codebooks_and_only_on_request_the_encoder():
    x, _ = data(n=64)
    xt = torch.from_numpy(x)
    for encoder_grad in (False, True):
        torch.manual_seed(0)
        model = rqvae.DomainRQVAE(x.shape[1], ["A", "B"], CFG)
        rqvae.init_codebooks(model, xt, 0, 5)
        loss, accuracy = rqvae.mtm_loss(model, model.quantize(model.encoder(xt)), 0.5, encoder_grad)
        assert loss.item() > 0 and 0 <= accuracy <= 1
        loss.backward()
        assert model.codebooks.grad.abs().sum() > 0  # input and tied output embeddings
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mtm.parameters())
        enc = [p.grad for p in model.encoder.base_parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in enc) if encoder_grad else all(g is None for g in enc)
        assert all(p.grad is None for p in model.decoder.parameters())


def test_codes_round_trip_and_encoding_is_deterministic(fitted):
    x, domains, model, _ = fitted
    index = rqvae.domain_indices(model, domains)
    enc = rqvae.encode(model, x, index)
    assert enc.codes.shape == (len(x), 3) and enc.codes.min() >= 0 and enc.codes.max() < 8
    # the quantised latent is the sum of the selected codebook vectors, the last residual what remains before level 3
    np.testing.assert_allclose(rqvae.codes_to_latent(model, enc.codes), enc.z_hat, atol=1e-5)
    books = model.codebooks.detach().numpy()
    np.testing.assert_allclose(enc.z - books[0][enc.codes[:, 0]] - books[1][enc.codes[:, 1]], enc.last_residual,
                               atol=1e-5)
    cost = rqvae.last_level_cost(model, enc.last_residual)
    assert (cost.argmin(1) == enc.codes[:, -1]).all()  # the nearest last-level code is the encoded one
    again = rqvae.encode(model, x, index)
    assert np.array_equal(enc.codes, again.codes) and np.array_equal(enc.z, again.z)
    # the saved arrays rebuild the same net (this is what tokenization.add_items loads)
    loaded = rqvae.model_from_arrays(rqvae.state_arrays(model))
    assert loaded.domains == ["A", "B"]
    assert np.array_equal(rqvae.encode(loaded, x, index).codes, enc.codes)
    # seeded: a second fit gives the same codes
    model2, _ = rqvae.fit_rqvae_domain(x, domains, rqvae.RQVAEConfig(**{**CFG.__dict__, "epochs": 2}), 0, None, False)
    model3, _ = rqvae.fit_rqvae_domain(x, domains, rqvae.RQVAEConfig(**{**CFG.__dict__, "epochs": 2}), 0, None, False)
    assert np.array_equal(rqvae.encode(model2, x, index).codes, rqvae.encode(model3, x, index).codes)


def test_an_unused_code_is_reset_to_a_current_residual():
    x, domains = data(n=120)
    torch.manual_seed(0)
    model = rqvae.DomainRQVAE(x.shape[1], ["A", "B"], CFG)
    xt = torch.from_numpy(x)
    rqvae.init_codebooks(model, xt, 0, 5)
    with torch.no_grad():
        model.codebooks.data[1, 3] = 100.0  # far from every residual: no item picks it
        counts = np.stack([np.bincount(c, minlength=8) for c in model.quantize(model.encoder(xt)).codes.T.numpy()])
    assert counts[1, 3] == 0
    before = model.codebooks.detach().clone()
    reset = rqvae.reset_dead_codes(model, xt, counts, np.random.default_rng(0))
    after = model.codebooks.detach()
    assert reset[1] == int((counts[1] == 0).sum()) >= 1
    assert after[1, 3].abs().max() < 10  # moved ...
    with torch.no_grad():  # ... onto a level-2 residual of some item
        z = model.encoder(xt)
        r1 = z - after[0][model.quantize(z).codes[:, 0]]
    assert torch.cdist(after[1, 3][None], r1).min() < 1e-5
    used = torch.from_numpy(counts > 0)
    assert torch.equal(after[used], before[used])  # codes in use are untouched


def test_training_resets_dead_codes_every_epoch(monkeypatch):
    x, domains = data(n=120)
    calls = []
    real = rqvae.reset_dead_codes

    def spy(model, xt, counts, rng, opt=None):
        calls.append(counts.copy())
        return real(model, xt, counts, rng, opt)

    monkeypatch.setattr(rqvae, "reset_dead_codes", spy)
    _, info = rqvae.fit_rqvae_domain(x, domains, rqvae.RQVAEConfig(**{**CFG.__dict__, "epochs": 3}), 0, None, False)
    assert len(calls) == 3 and all(c.sum(1).tolist() == [120] * 3 for c in calls)  # every item counted per level
    assert info["stage1_universal"]["dead_codes_reset_per_level"] == np.sum(
        [(c == 0).sum(1) for c in calls], 0).tolist()


def test_a_domains_lora_changes_only_that_domain():
    x, _ = data(n=64)
    xt = torch.from_numpy(x)
    torch.manual_seed(0)
    model = rqvae.DomainRQVAE(x.shape[1], ["A", "B"], CFG)
    rqvae.init_codebooks(model, xt, 0, 5)

    def recon(z):
        return float(((model.decoder(model.quantize(z).z_hat) - xt) ** 2).sum(1).mean())

    with torch.no_grad():
        u0, a0, b0 = model.encoder(xt), model.encoder(xt, 0), model.encoder(xt, 1)
    assert torch.equal(u0, a0) and torch.equal(u0, b0)  # B = 0: every LoRA starts as the universal encoder
    cfg = rqvae.RQVAEConfig(**{**CFG.__dict__, "lora_epochs": 60})
    rqvae.train_lora(model, xt, 0, cfg, np.random.default_rng(0), progress=False)  # domain A only
    with torch.no_grad():
        u1, a1, b1 = model.encoder(xt), model.encoder(xt, 0), model.encoder(xt, 1)
        assert recon(a1) < 0.99 * recon(u1)  # trained by reconstruction through the frozen quantiser/decoder
    assert torch.equal(u1, u0) and torch.equal(b1, b0)  # frozen base, B's LoRA untouched
    assert (a1 - u1).abs().max() > 1e-4  # A's LoRA moved A's latents
    assert all(not p.requires_grad for p in model.parameters())  # frozen again after the stage


def test_router_weight_is_a_gate_and_its_kl_is_a_proper_kl():
    torch.manual_seed(0)
    router = rqvae.Router(16, 16, 4)
    x = torch.randn(50, 16)
    for sample in (True, False):
        w, kl = router(x, sample)
        assert w.shape == (50,) and kl.shape == (50,)
        assert ((w > 0) & (w < 1)).all() and (kl >= 0).all()
    mu, logvar = router.posterior(x).chunk(2, dim=-1)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(router(x, False)[1], ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(router(x, False)[0], router(x, False)[0])  # encoding uses the posterior mean
    assert not torch.equal(router(x, True)[0], router(x, True)[0])  # training samples s ~ q(s|x)


def test_routed_latent_mixes_universal_and_domain_latents(fitted):
    x, domains, model, _ = fitted
    xt = torch.from_numpy(x[:20])
    with torch.no_grad():
        z, w, kl = model.routed_latent(xt, 1, sample=False)
        expect = w[:, None] * model.encoder(xt) + (1 - w[:, None]) * model.encoder(xt, 1)
    torch.testing.assert_close(z, expect)
    assert ((w > 0) & (w < 1)).all() and (kl >= 0).all()


def test_an_item_of_a_domain_without_a_lora_is_a_clear_error(fitted):
    x, _, model, _ = fitted
    with pytest.raises(UserError, match=r"my_sids: 2 item\(s\) of domain 'C', e.g. item 'C:1'.*only for \['A', 'B'\]"):
        rqvae.domain_indices(model, ["A", "C", "B", "C"], "my_sids", ["A:0", "C:1", "B:2", "C:3"])


def test_sample_without_a_domain_is_refused():
    from tokenization.rq_kmeans import sample_row_indices

    x, _ = data(n=40)
    domains = ["A"] * 40
    domains[int(np.setdiff1d(np.arange(40), sample_row_indices(40, 20, 0))[0])] = "C"  # C's only item not sampled
    with pytest.raises(UserError, match="sample_size: .* no item of domain 'C'"):
        rqvae.fit_rqvae_domain(x, domains, CFG, 0, sample_size=20, progress=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("rqvae_build")
    dataset, emb = make_tiny(root)
    out = root / "sids"
    assert build_main(["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(emb),
                       "--output_dir", str(out), *TINY_RQVAE]) == 0
    return root, dataset, emb, out


def test_build_cli_writes_an_artifact_with_quality_and_the_net(built, capsys):
    root, dataset, emb, out = built
    art = load_sid_artifact(out)
    meta = art.meta
    assert meta["algorithm"] == "rqvae_domain" and meta["semantic_levels"] == 3 and meta["dedup_level"]
    quality = json.loads((out / "quality.json").read_text())
    for level in quality["levels"][:3]:
        assert 0 < level["utilization"] <= 1 and 0 <= level["gini"] < 1
    assert quality["collisions_before"]["collision_rate"] >= 0 and quality["collisions_after"]["collision_rate"] == 0
    assert set(quality["neighbour_consistency"]) == {"prefix_1", "prefix_2"}
    assert len(quality["reconstruction_mse"]) == 4
    info = meta["method_info"]
    assert info["domains_with_lora"] == ["Office", "Toys"]
    assert set(info["router_weight"]) == {"Office", "Toys"} and all(
        0 < v["mean"] < 1 for v in info["router_weight"].values())
    assert {"stage1_universal", "stage2_lora", "stage3_router"} <= set(info)
    assert np.load(out / "codebooks" / "rqvae.domains.npy").tolist() == ["Office", "Toys"]
    assert (out / "codebooks" / "rqvae.codebooks.npy").exists()
    # the saved net reproduces the semantic codes (collisions only add the de-duplication level)
    x = np.load(emb / "embeddings.npy")
    ids = list(art.item_ids)
    semantic, cost = A.item_encoder(art)(x, [i.split(":")[0] for i in ids], ids)
    assert np.array_equal(semantic, np.asarray(art.codes)[:, :3]) and cost.shape == (len(x), 16)


def test_add_items_encodes_a_known_domain_and_refuses_an_unknown_one(built, tmp_path, capsys, monkeypatch):
    root, *_, out = built
    embedded = []
    monkeypatch.setattr(A, "embed_new_items", lambda items, meta: embedded.append(items) or np.load(
        root / "embeddings" / "embeddings.npy")[:len(items)] * 0.9 + 0.1 / np.sqrt(24))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"item_id": "Books:1", "domain": "Books", "title": "a book"}) + "\n")
    assert A.main(["--sids", str(out), "--out", str(tmp_path / "v2"), "--new_items", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "'Books'" in err[0] and "['Office', 'Toys']" in err[0], err
    assert not (tmp_path / "v2").exists() and not embedded  # refused before any embedding work
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"item_id": "Toys:new", "domain": "Toys", "title": "a new toy"}) + "\n")
    assert A.main(["--sids", str(out), "--out", str(tmp_path / "v3"), "--new_items", str(good)]) == 0
    parent, child = load_sid_artifact(out), load_sid_artifact(tmp_path / "v3")
    A.check_extends(parent, child, "test")
    assert child.item_ids[-1] == "Toys:new" and len(set(child.sid_strings())) == len(child.item_ids)


@pytest.mark.parametrize("args, message", [
    (["--rqvae_beta", "0"], "rqvae_beta"),
    (["--rqvae_lora_rank", "0"], "rqvae_lora_rank"),
    (["--rqvae_vib_weight", "-1"], "rqvae_vib_weight"),
    (["--rqvae_mtm_mask_prob", "1"], "rqvae_mtm_mask_prob"),
    (["--levels", "1", "--rqvae_mtm_weight", "0.1"], "needs levels >= 2"),
])
def test_bad_settings_are_one_error_line(built, tmp_path, capsys, args, message):
    _, dataset, emb, _ = built
    code = build_main(["--config", str(TINY_CONFIG), "--dataset", str(dataset), "--embeddings", str(emb),
                       "--output_dir", str(tmp_path / "o"), *TINY_RQVAE, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()
