"""The report's pictures of how a generative row was made: training curves (SFT → RL chain) and SID quality."""

from __future__ import annotations

import json

from eval.curves import checkpoint_curves, read_log, sid_quality, thin
from eval.report import curves_table, sid_reports, sid_table, training_stages


def write_checkpoint(path, records, meta):
    path.mkdir(parents=True)
    (path / "genrec_sft.json").write_text(json.dumps(meta))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def chain(tmp_path):
    sft, rl = tmp_path / "sft", tmp_path / "rl"
    write_checkpoint(sft, [{"step": 50, "loss": 4.0, "grad_norm": 1.0}, {"step": 100, "loss": 2.5},
                           {"step": 100, "eval_ndcg@10": 0.05, "eval_hr@10": 0.09},
                           {"step": 200, "loss": 2.0}, {"step": 200, "eval_ndcg@10": 0.07}],
                     {"stage": "sft", "sid_dir": str(tmp_path / "sids")})
    write_checkpoint(rl, [{"step": 10, "loss": 0.69, "rewards/margins": 0.1, "rewards/chosen": 0.02},
                          {"step": 20, "loss": 0.5, "rewards/margins": 0.9, "rewards/chosen": 0.3},
                          {"step": 20, "valid_ndcg@10": 0.08}],
                     {"stage": "dpo", "parent_checkpoint": str(sft), "sid_dir": str(tmp_path / "sids")})
    return sft, rl


def test_curves_follow_the_parent_chain_first_stage_first(tmp_path):
    sft, rl = chain(tmp_path)
    stages = checkpoint_curves(rl)
    assert [(s["checkpoint"], s["stage"]) for s in stages] == [(str(sft), "sft"), (str(rl), "dpo")]
    assert stages[0]["series"]["loss"] == [[50, 4.0], [100, 2.5], [200, 2.0]]
    assert stages[0]["series"]["eval_ndcg@10"] == [[100, 0.05], [200, 0.07]]
    assert "grad_norm" not in stages[0]["series"]  # only the keys the report draws
    assert stages[1]["series"]["rewards/margins"] == [[10, 0.1], [20, 0.9]]
    assert checkpoint_curves(tmp_path / "nothing_here") == []


def test_a_log_cut_by_a_kill_ends_at_the_cut_and_long_runs_are_thinned(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "lo')
    assert read_log(path) == {"loss": [[1, 3.0], [2, 2.0]]}
    points = [[i, float(i)] for i in range(1000)]
    thinned = thin(points, 200)
    assert len(thinned) == 200 and thinned[0] == points[0] and thinned[-1] == points[-1]
    assert thinned == sorted(thinned)


def quality_json(sids):
    sids.mkdir()
    (sids / "quality.json").write_text(json.dumps({
        "n_items": 100, "top_k": 2,
        "levels": [{"utilization": 1.0, "entropy": 3.9, "max_entropy": 4.0, "gini": 0.1, "top_k_share": 0.15},
                   {"utilization": 0.5, "entropy": 2.0, "max_entropy": 4.0, "gini": 0.6, "top_k_share": 0.7}],
        "collisions_before": {"collision_rate": 0.2}, "collisions_after": {"collision_rate": 0.0}}))


def test_report_draws_the_curves_and_the_sid_quality_of_each_checkpoint_once(tmp_path):
    sft, rl = chain(tmp_path)
    quality_json(tmp_path / "sids")
    q = sid_quality(tmp_path / "sids")
    assert [lv["utilization"] for lv in q["levels"]] == [1.0, 0.5]
    by_domain = {"all": {"hr@10": 0.1, "ndcg@10": 0.05, "rows": 10}}
    metrics = {"split": "test", "ks": [10], "method_order": ["generative", "generative_rl"],
               "methods": {"generative": by_domain, "generative_rl": by_domain},
               "training": {"generative": {"curves": checkpoint_curves(sft), "sid_quality": q},
                            "generative_rl": {"curves": checkpoint_curves(rl), "sid_quality": q}}}
    stages = training_stages(metrics)
    assert [(s["stage"], s["methods"]) for s in stages] == [("sft", ["generative", "generative_rl"]),
                                                           ("dpo", ["generative_rl"])]
    table = curves_table(stages)
    assert "| 4.000 → 2.000 |" in table and "| .0700 (200) |" in table and "| .0800 (20) |" in table
    assert "– / – / .900" in table  # DPO: no reward / KL keys, margin .9
    sids = sid_reports(metrics)
    assert len(sids) == 1 and sids[0]["methods"] == ["generative", "generative_rl"]
    assert ".200 → .000" in sid_table(sids) and "| 2 | .500 |" in sid_table(sids)

    from eval.report import plot_sid_quality, plot_training_curves

    plot_training_curves(stages, tmp_path / "curves.png")
    plot_sid_quality(sids, tmp_path / "sids.png")
    assert (tmp_path / "curves.png").stat().st_size > 5000 and (tmp_path / "sids.png").stat().st_size > 5000


def test_a_report_without_generative_rows_has_no_curve_section(tmp_path):
    by_domain = {"all": {"hr@10": 0.1, "ndcg@10": 0.05, "rows": 10}}
    metrics = {"split": "test", "ks": [10], "method_order": ["popularity"], "methods": {"popularity": by_domain},
               "training": {"popularity": {"seconds": 0.1}}}
    assert training_stages(metrics) == [] and sid_reports(metrics) == []
