"""GenCDR (seed 001): expert layers, routing, the router mixture inside the trie, training and bad inputs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sft_fixtures import make_tiny_pipeline  # noqa: E402

from sft.experts import add_domain_adapters, attach_experts, expert_layers, routed  # noqa: E402

TINY = ["--scratch_hidden_size", "32", "--scratch_layers", "2", "--scratch_heads", "2", "--universal_epochs", "3",
        "--domain_epochs", "2", "--router_steps", "20", "--batch_size", "4", "--warmup_steps", "2",
        "--logging_steps", "2", "--expert_rank", "4", "--domain_rank", "4", "--show_progress", "false",
        "--lora_dropout", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny two-domain pipeline and a GenCDR run on it (universal experts + 2 domain LoRAs + router)."""
    from sft.cross_domain import main

    root = tmp_path_factory.mktemp("cdr")
    ds, sids = make_tiny_pipeline(root, domains=("Mini", "Mini2"))
    out = root / "out"
    assert main(["--dataset_dir", str(ds), "--sid_dir", str(sids), "--output_dir", str(out), *TINY]) == 0
    return {"root": root, "dataset": ds, "sids": sids, "out": out}


def tiny_expert_model(n_experts=3, gate="learned", n_domains=2, seed=0):
    from sft.models import build_scratch_lm

    model, tok = build_scratch_lm([f"<s_{i}>" for i in range(6)], "scratch", 32, 2, 2, seed=seed, dropout=0.0)
    attach_experts(model, ["q_proj", "v_proj", "down_proj"], n_experts, 4, 8.0, 0.0, gate)
    add_domain_adapters(model, n_domains, 4, 8.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B = 0 at init: give every adapter and the gate weights so each has an effect
        for layer in expert_layers(model):
            for p in [layer.expert_b, *layer.domain_b] + ([layer.gate.weight] if layer.gate is not None else []):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval(), tok


def logits(model, ids, universal=True, domains=None):
    with torch.no_grad(), routed(model, universal=universal, domains=domains):
        return model(input_ids=ids).logits


def test_switching_adapters_changes_outputs_and_a_mixed_batch_equals_each_alone():
    model, _ = tiny_expert_model()
    ids = torch.randint(0, 6, (4, 7), generator=torch.Generator().manual_seed(1))
    base = logits(model, ids, universal=False)
    uni = logits(model, ids)
    d0 = logits(model, ids, domains=torch.zeros(4, dtype=torch.long))
    d1 = logits(model, ids, domains=torch.ones(4, dtype=torch.long))
    for a, b in [(base, uni), (uni, d0), (d0, d1)]:
        assert (a - b).abs().max() > 1e-3
    mixed = logits(model, ids, domains=torch.tensor([0, 1, -1, 1]))
    torch.testing.assert_close(mixed[0], d0[0])
    torch.testing.assert_close(mixed[1], d1[1])
    torch.testing.assert_close(mixed[2], uni[2])
    torch.testing.assert_close(mixed[3], d1[3])
    # a [B] route on a [B*K] batch (beam rows, user-major) repeats each user's domain
    beams = ids.repeat_interleave(2, dim=0)
    torch.testing.assert_close(logits(model, beams, domains=torch.tensor([0, 1, -1, 1]))[::2], mixed)


def test_gate_mixes_experts_and_average_ignores_it():
    model, _ = tiny_expert_model(gate="learned")
    layer = expert_layers(model)[0]
    x = torch.randn(5, layer.in_features)
    g = layer.gate_weights(x)
    torch.testing.assert_close(g.sum(-1), torch.ones(5))
    assert g.std(-1).min() > 0  # the trained-like gate is not uniform
    avg, _ = tiny_expert_model(gate="average")
    torch.testing.assert_close(expert_layers(avg)[0].gate_weights(x), torch.full((5, 3), 1 / 3))
    # with the same experts, the learned gate changes the output
    ids = torch.randint(0, 6, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for a, b in zip(expert_layers(model), expert_layers(avg)):
            b.expert_a.copy_(a.expert_a)
            b.expert_b.copy_(a.expert_b)
            b.base.load_state_dict(a.base.state_dict())
    assert (logits(model, ids) - logits(avg, ids)).abs().max() > 1e-4


def test_mix_allowed_sums_to_one_over_the_allowed_tokens():
    from decoding.mixture import mix_allowed

    g = torch.Generator().manual_seed(0)
    lu = torch.log_softmax(torch.randn(6, 20, generator=g), -1)
    ld = torch.log_softmax(torch.randn(6, 20, generator=g), -1)
    cols = torch.arange(5, 13)
    allowed = torch.rand(6, 8, generator=g) > 0.4
    allowed[:, 0] = True
    for alpha in (torch.zeros(6), torch.full((6,), 0.3), torch.rand(6, generator=g), torch.ones(6)):
        mixed = mix_allowed(lu, ld, alpha, allowed, cols)
        torch.testing.assert_close(mixed.exp().sum(-1), torch.ones(6))
        assert torch.isinf(mixed[~allowed]).all()
    # α = 1 / 0: the renormalised universal / domain distribution alone
    one = mix_allowed(lu, ld, torch.ones(6), allowed, cols)
    only_u = mix_allowed(lu, None, torch.ones(6), allowed, cols)
    torch.testing.assert_close(one[allowed], only_u[allowed], atol=1e-4, rtol=0)


def test_training_writes_named_adapters_and_moves_the_gate(trained):
    from safetensors.torch import load_file

    out = trained["out"]
    assert sorted(p.name for p in (out / "domains").iterdir()) == ["Mini", "Mini2"]
    meta = json.loads((out / "universal" / "genrec_cdr.json").read_text())
    assert meta["sid_dir"] == str(trained["sids"]) and meta["model"] == "scratch" and meta["experts"]["n"] == 4
    gates = {k: v for k, v in load_file(str(out / "universal" / "weights.safetensors")).items()
             if ".gate.weight" in k and "expert" not in k and ".base." not in k}
    assert gates and max(float(v.abs().max()) for v in gates.values()) > 0  # zero-initialised, trained
    for d in ("Mini", "Mini2"):
        m = json.loads((out / "domains" / d / "genrec_cdr.json").read_text())
        assert m["domain"] == d and m["sid_hash"] == meta["sid_hash"]
        b = [v for k, v in load_file(str(out / "domains" / d / "adapter.safetensors")).items() if "domain_b" in k]
        assert b and max(float(v.abs().max()) for v in b) > 0  # B starts at 0: trained
    router = json.loads((out / "router" / "genrec_cdr.json").read_text())
    assert set(router["alpha_mean"]) == {"Mini", "Mini2"}
    assert all(0 < a < 1 for a in router["alpha_mean"].values())
    assert router["nll"]["learned"] <= min(router["nll"][k] for k in ("alpha_0.0", "alpha_0.5", "alpha_1.0")) + 0.05


def test_domain_adapter_loaded_alone_matches_the_mixed_model(trained):
    from sft.cross_domain import load_cdr

    out = trained["out"]
    both = load_cdr(out / "universal", {d: out / "domains" / d for d in ("Mini", "Mini2")})
    alone = load_cdr(out / "universal", {"Mini2": out / "domains" / "Mini2"})
    ids = torch.randint(0, len(both.tokenizer), (3, 6), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(both.model, ids, domains=both.domain_index(["Mini2"] * 3)),
                               logits(alone.model, ids, domains=alone.domain_index(["Mini2"] * 3)))
    assert (logits(both.model, ids, domains=both.domain_index(["Mini"] * 3))
            - logits(both.model, ids, domains=both.domain_index(["Mini2"] * 3))).abs().max() > 1e-4


def beams(trained, path, **kw):
    from data_builders.dataset import load_rec_dataset
    from eval.models.cross_domain import CrossDomainRecommender
    from eval.recommenders import Query

    ds = load_rec_dataset(trained["dataset"])
    rows = list(ds.splits["test"]) + list(ds.splits["valid"])
    queries = [Query(i, r["user_id"], r["domain"], tuple(r["history"])) for i, r in enumerate(rows)]
    rec = CrossDomainRecommender(str(trained["out"]), path=path, **kw)
    rec.fit(ds, [], None)
    return rec, queries, ds


def test_router_mixture_decodes_only_valid_items_of_the_row_domain(trained):
    rec, queries, ds = beams(trained, "router", batch_size=3)
    domain_of = dict(zip(ds.item_ids, ds.items["domain"]))
    lists = rec.recommend(queries, 3)
    assert {q.domain for q in queries} == {"Mini", "Mini2"}
    for q, items in zip(queries, lists):
        assert len(items) == 3 and len(set(items)) == 3
        assert all(domain_of[i] == q.domain for i in items)
    alphas = [a for v in rec.alphas.values() for a in v]
    assert alphas and all(0 < a < 1 for a in alphas)
    # a mixed-domain batch gives what each domain's rows give alone
    for d in ("Mini", "Mini2"):
        idx = [i for i, q in enumerate(queries) if q.domain == d]
        assert rec.recommend([queries[i] for i in idx], 3) == [lists[i] for i in idx]


def test_mixture_beam_scores_equal_the_teacher_forced_mixture(trained):
    """With a beam as wide as a domain's catalogue the search is exact: each item's score is
    Σ_l log(α P_u(t_l | prefix, allowed) + (1 − α) P_d(t_l | prefix, allowed)), computed here by teacher forcing."""
    from decoding.mixture import mixture_beam_search
    from decoding.recommend import encode_prompts, history_prompts
    from sft.cross_domain import mixture_nll, router_features

    rec, queries, ds = beams(trained, "domain")
    cdr, cat = rec.cdr, rec.catalogue
    trie = cat.trie(cdr.tokenizer)
    tables = trie.tables("cpu")
    q = [q for q in queries if q.domain == "Mini2"][0]
    items = [i for i, d in zip(ds.item_ids, ds.items["domain"]) if d == q.domain]
    ids, mask = encode_prompts(cdr.tokenizer, history_prompts(cdr.tokenizer, cat, [list(q.history)],
                                                              cdr.meta["history_len"]))
    rows = [{"history": list(q.history), "domain": q.domain, "target": i} for i in items]
    _, _, lu, ld = router_features(cdr, cat, rows, show_progress=False)
    for alpha in (0.0, 0.3, 1.0):
        out, _ = mixture_beam_search(cdr.model, ids, mask, tables, torch.tensor([trie.root(q.domain)]), len(items),
                                     cdr.tokenizer.eos_token_id, cdr.domain_index([q.domain]),
                                     alpha=torch.tensor([alpha]))
        expected = -mixture_nll(torch.full((len(items),), alpha), lu, ld)
        got = {str(cat.item_ids[int(tables.leaf_item[leaf])]): float(s) for leaf, s in zip(out.leaves[0],
                                                                                            out.scores[0])}
        assert sorted(got) == sorted(items)
        for item, e in zip(items, expected.tolist()):
            assert got[item] == pytest.approx(e, abs=1e-4), (alpha, item)
        assert torch.exp(out.scores[0]).sum() == pytest.approx(1.0, abs=1e-4)  # a distribution over the items


def test_global_trie_and_no_prefix_tree_options(trained):
    rec, queries, ds = beams(trained, "router", global_trie=True)
    lists = rec.recommend(queries, 3)
    assert all(i in set(ds.item_ids) for items in lists for i in items)
    free, queries, _ = beams(trained, "router", constrained=False)
    out = free.recommend(queries, 3)
    assert all(0 < len(items) <= 3 for items in out)


def test_per_domain_recommender_dispatches_by_domain(trained):
    from eval.models.cross_domain import CrossDomainRecommender, PerDomainRecommender

    rec, queries, ds = beams(trained, "domain")
    only = PerDomainRecommender({"Mini": rec})
    with pytest.raises(ValueError, match="no model for domain"):
        only.recommend(queries, 3)
    both = PerDomainRecommender({"Mini": rec, "Mini2": CrossDomainRecommender(str(trained["out"]), path="domain")})
    both.fit(ds, [], None)
    assert both.recommend(queries, 3) == rec.recommend(queries, 3)


# --------------------------------------------------------------------------------------------- bad input


def test_domain_without_adapter_is_a_clear_error(trained):
    from data_builders.cli import UserError
    from sft.cross_domain import load_cdr

    out = trained["out"]
    cdr = load_cdr(out / "universal", {"Mini": out / "domains" / "Mini"})
    with pytest.raises(UserError, match="'Mini2' has no adapter"):
        cdr.domain_index(["Mini", "Mini2"])


def test_adapter_of_another_universal_model_or_sid_artifact_is_refused(trained, tmp_path):
    from data_builders.dataset import DataError
    from sft.cross_domain import load_cdr

    out = trained["out"]
    other = tmp_path / "other"
    shutil.copytree(out, other)
    from safetensors.torch import load_file, save_file
    weights = other / "universal" / "weights.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if "expert_b" in k)
    state[key] = state[key] + 1.0
    save_file(state, str(weights))
    with pytest.raises(DataError, match="other universal weights"):
        load_cdr(other / "universal", {"Mini": out / "domains" / "Mini"})
    meta = json.loads((out / "domains" / "Mini" / "genrec_cdr.json").read_text())
    wrong = tmp_path / "wrong_sids"
    shutil.copytree(out / "domains" / "Mini", wrong)
    (wrong / "genrec_cdr.json").write_text(json.dumps({**meta, "sid_hash": "0" * 64}))
    with pytest.raises(DataError, match="another SID artifact"):
        load_cdr(out / "universal", {"Mini": wrong})
    with pytest.raises(Exception, match="adapter of domain 'Mini'"):
        load_cdr(out / "universal", {"Mini2": out / "domains" / "Mini"})


def test_router_of_other_adapters_is_refused(trained):
    from data_builders.dataset import DataError
    from sft.cross_domain import load_cdr

    out = trained["out"]
    with pytest.raises(DataError, match="router was trained with other adapters"):
        load_cdr(out / "universal", {"Mini": out / "domains" / "Mini"}, out / "router")


def test_cli_errors_are_one_line_and_exit_2(trained, tmp_path, capsys):
    from sft.cross_domain import main

    base = ["--dataset_dir", str(trained["dataset"]), "--sid_dir", str(trained["sids"]), *TINY]
    cases = [
        (["--gate", "sometimes"], "gate"),
        (["--stages", "router", "universal"], "stages"),
        (["--stages", "domains"], "universal_dir"),
        (["--domains", "Books"], "Books"),
        (["--sid_dir", str(tmp_path / "nowhere")], "nowhere"),
        (["--stages", "domains", "--universal_dir", str(trained["out"] / "domains" / "Mini")], "genrec_cdr.json"),
    ]
    for extra, where in cases:
        out = tmp_path / "run"
        assert main([*base, "--output_dir", str(out), *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and where in err[0], (extra, err)
        assert not out.exists() or not any(out.iterdir()), extra  # nothing half-written


# --------------------------------------------------------------------------------------------- report


def bench_result():
    doms = ["Industrial_and_Scientific", "Office_Products"]
    v = {"per_domain": (0.0950, 0.0940), "gencdr": (0.0990, 0.0945)}
    result = {"domains": doms, "split": "test", "train_splits": ["train", "valid"], "eval_rows": 9399,
              "dataset_hash": "abc", "command": "python benchmarks/cross_domain_bench.py",
              "variants": {n: {d: {"ndcg@10": x, "hr@10": 2 * x, "ndcg@5": x, "hr@5": x} for d, x in zip(doms, xs)}
                           for n, xs in v.items()},
              "spread": {n: {d: {"ndcg@10": 0.002, "hr@10": 0.003} for d in doms} for n in v},
              "runs": {n: {"seeds": [0, 1], "description": n} for n in v},
              "cpu_minutes": {n: {"train": 10.0, "recommend": 2.0} for n in v},
              "alpha_mean": {"gencdr": {doms[0]: 0.25, doms[1]: 0.5}, "per_domain": None}}
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import cross_domain_bench as bench
    result["claims"] = bench.claims(result)
    return result


def test_claims_compare_the_gain_with_the_seed_spread():
    c = bench_result()["claims"]["per_domain"]
    assert c["Industrial_and_Scientific"]["gain"] == pytest.approx(0.004)
    assert c["Industrial_and_Scientific"]["beats"] is True  # +.004 > spread .002
    assert c["Office_Products"]["beats"] is False  # +.0005 < .002


def test_report_has_a_cross_domain_section():
    from eval.report import cross_domain_section

    text = "\n".join(cross_domain_section(bench_result()))
    assert "## Cross-domain (GenCDR, seed 001)" in text
    row = next(line for line in text.splitlines() if line.startswith("| gencdr |"))
    assert ".0990 / .0945" in row and ".1980 / .1890" in row and ".250 / .500" in row and "| 2 |" in row
    assert "Industrial +0.0040 (+4.2%, spread .0020: beats)" in text
    assert "Office +0.0005 (+0.5%, spread .0020: within noise or worse)" in text
    assert "python benchmarks/cross_domain_bench.py" in text


def test_eval_refuses_a_cross_domain_result_of_another_dataset(tmp_path):
    from data_builders.cli import UserError
    from eval.run import load_cross_domain

    path = tmp_path / "cd.json"
    path.write_text(json.dumps(bench_result()))
    assert load_cross_domain(str(path), "abc", "test")["path"] == str(path)
    with pytest.raises(UserError, match="measured on dataset abc"):
        load_cross_domain(str(path), "def", "test")
    with pytest.raises(UserError, match="scored the 'test' rows"):
        load_cross_domain(str(path), "abc", "valid")
    path.write_text(json.dumps({"x": 1}))
    with pytest.raises(UserError, match="no `variants`"):
        load_cross_domain(str(path), "abc", "test")


def test_a_pretrained_base_stays_frozen_and_decodes_valid_items(trained, tmp_path):
    """An HF model (the in-process `tiny` llama): base weights frozen, only experts, SID rows, domain LoRAs train."""
    from safetensors.torch import load_file

    from sft.cross_domain import load_cdr_dir, main

    out = tmp_path / "hf"
    assert main(["--dataset_dir", str(trained["dataset"]), "--sid_dir", str(trained["sids"]), "--output_dir",
                 str(out), *TINY, "--model_name_or_path", "tiny", "--stages", "universal", "domains"]) == 0
    meta = json.loads((out / "universal" / "genrec_cdr.json").read_text())
    assert meta["train_base"] is False and meta["model"] == "tiny"
    saved = load_file(str(out / "universal" / "weights.safetensors"))
    assert not any("q_proj.base" in k or "mlp.down_proj.base" in k for k in saved)  # the base is not saved
    cdr = load_cdr_dir(out, with_router=False)
    assert cdr.domains == ["Mini", "Mini2"]
    rec, queries, ds = beams({**trained, "out": out}, "domain")
    domain_of = dict(zip(ds.item_ids, ds.items["domain"]))
    for q, items in zip(queries, rec.recommend(queries, 3)):
        assert len(items) == 3 and all(domain_of[i] == q.domain for i in items)


def test_recommend_cli_serves_a_gencdr_run(trained, tmp_path, capsys):
    from decoding.cli import main

    out, ds = trained["out"], str(trained["dataset"])
    assert main(["--checkpoint", str(out), "--dataset", ds, "--history", "Mini:1", "Mini:2", "--k", "3",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["domain"] == "Mini" and len(got["items"]) == 3 and all(i["domain"] == "Mini" for i in got["items"])
    assert main(["--checkpoint", str(out), "--dataset", ds, "--history", "Mini:1", "Mini:2", "--k", "8",
                 "--global_trie", "--json"]) == 0  # more than Mini's 6 items: only the global trie has them
    got = json.loads(capsys.readouterr().out)
    assert len(got["items"]) == 8 and {i["domain"] for i in got["items"]} == {"Mini", "Mini2"}
    one = tmp_path / "one"
    shutil.copytree(out, one)
    shutil.rmtree(one / "domains" / "Mini2")
    shutil.rmtree(one / "router")
    for argv, where in [
        (["--checkpoint", str(one), "--history", "Mini2:1"], "has no adapter"),
        (["--checkpoint", str(one), "--history", "Mini:1", "--cdr_path", "router"], "no router"),
        (["--checkpoint", str(trained["sids"]), "--history", "Mini:1", "--global_trie"], "not a GenCDR run"),
    ]:
        assert main([*argv, "--dataset", ds]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and where in err[0], (argv, err)
    assert main(["--checkpoint", str(one), "--dataset", ds, "--history", "Mini2:1", "--cdr_path", "universal",
                 "--k", "2"]) == 0


def test_report_cli_refuses_bad_inputs_in_one_line(tmp_path, capsys):
    from eval.report import FORMAT, main

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"format": FORMAT, "dataset_hash": "zzz", "split": "test"}))
    cd = tmp_path / "cd.json"
    cd.write_text(json.dumps(bench_result()))
    for argv, where in [(["--metrics", str(tmp_path / "none.json")], "none.json"),
                        (["--metrics", str(metrics), "--cross_domain_results", str(cd)], "measured on dataset abc")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and where in err[0], err


def test_shipped_gencdr_configs_parse_strictly():
    from data_builders.cli import parse_config
    from sft.cross_domain import CDRArgs, check_args

    configs = [c for c in sorted((Path(__file__).parent.parent / "configs" / "sft").glob("*.yaml"))
               if c.read_text().startswith("# python -m sft.cross_domain")]
    assert configs
    for cfg in configs:
        (a,) = parse_config((CDRArgs,), ["--config", str(cfg)])
        check_args(a)
        assert a.stages == ["universal", "domains", "router"] and a.n_experts >= 1, cfg
