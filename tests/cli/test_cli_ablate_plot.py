"""Readable plots (`plot`, the ablation chart) and `ablate --arms` / budget overrides."""
import json

import pytest

from cli_helpers import REPO, cli
from ghostnetv3.ablate.plan import load_plan, with_budget, with_references
from ghostnetv3.ablate.report import figure
from ghostnetv3.engine.plot import lr_per_step, plot_run

PLAN = REPO / "recipes" / "ablation_fashion_mnist.yaml"


def test_lr_panel_is_the_schedule_at_every_step(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    spe = next(r for r in recs if r["type"] == "epoch")["global_step"]  # epoch 1
    xs, lrs = lr_per_step(run_dir, spe)
    assert len(xs) == 2 * spe  # every optimizer step of both epochs, whatever --log-interval was
    for r in (r for r in recs if r["type"] == "step"):  # a step record holds the lr that step used
        assert lrs[r["global_step"] - 1] == pytest.approx(r["lr"], rel=1e-9)
    out = plot_run(run_dir, tmp_path / "c.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def _summary():
    arm = lambda name, ref, mean, diff: {  # noqa: E731
        "name": name, "ref": ref, "top1": {"mean": mean, "std": 0.5,
                                          "diff_vs_ref": None if diff is None else
                                          {"n": 3, "mean": diff, "ci": [diff - 1.0, diff + 1.0]}}}
    return {"name": "t", "metrics": ["top1"], "finished_runs": 6, "planned_runs": 6,
            "arms": [arm("plain", None, 80.0, None), arm("rep3", "plain", 81.0, 1.0)]}


def test_ablation_chart_starts_at_zero_and_shows_paired_differences():
    import matplotlib.pyplot as plt
    fig = figure(_summary())
    bars, diffs = fig.axes[0], fig.axes[1]
    assert bars.get_ylim()[0] == 0.0  # small gaps are not blown up by a truncated axis
    lo, hi = diffs.get_ylim()
    assert lo < 0.0 < hi and "reference" in diffs.get_ylabel()  # the interval around 0 is visible
    plt.close(fig)


def test_arms_bring_their_references_and_budget_overrides_rename(tmp_path):
    plan = load_plan(PLAN)
    assert with_references(plan, ["rep3"]) == ["plain_paper", "rep3"]
    quick = with_budget(plan, {"epochs": "1", "train_subset": "500"})
    assert quick.name == "fashion_mnist-epochs1-trainsubset500" and quick.config(quick.arms[0], 0).epochs == 1
    with pytest.raises(ValueError, match="set by the harness"):
        with_budget(plan, {"seed": 3})
    r = cli("ablate", "-c", PLAN, "--arms", "rep3", "--dry-run", "--seeds", "1", "--epochs", "1",
            "--output", tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "also running the reference arm(s) their comparisons need: plain_paper" in r.stdout
    assert "runs in " + str(tmp_path / "fashion_mnist-epochs1") in r.stdout
    assert r.stdout.strip().splitlines()[-2:] == ["todo  plain_paper-s0", "todo  rep3-s0"]
    r = cli("ablate", "-c", PLAN, "--arms", "rep3", "--no-refs", "--dry-run", "--seeds", "1", "--output", tmp_path,
            timeout=120)
    assert "reference arm(s) without finished runs: plain_paper" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "todo  rep3-s0"
