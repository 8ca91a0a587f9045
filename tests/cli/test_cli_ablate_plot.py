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


def _claim(text, arm, ref, mean, half=1.0, verdict="reproduced"):
    d = {"n": 0, "mean": None, "ci": None} if mean is None else \
        {"n": 3, "mean": mean, "ci": None if half is None else [mean - half, mean + half]}
    return {"claim": text, "arm": arm, "ref": ref, "expect": "higher", "margin": 1.0,
            "top1": {"diff": d, "verdict": verdict}}


def _summary(name="t"):
    return {"name": name, "metrics": ["top1"], "finished_runs": 9, "planned_runs": 12, "arms": [], "claims": [
        _claim("Mixup/CutMix hurt compact models", "paper", "conv", 5.08, 1.85),
        _claim("re-parameterization helps", "rep", "paper", -0.26, 0.40, "inconclusive (interval contains 0)"),
        _claim("an EMA horizon fitted to the run beats the paper's 0.9998", "ema", "ema_paper", 77.12, 0.38),
        _claim("one seed so far", "one", "paper", 1.5, None, "inconclusive (fewer than 2 seeds)"),
        _claim("KD helps", "kd", "rep", None, verdict="inconclusive (fewer than 2 seeds)")]}


def _texts_inside(fig) -> list[str]:
    """The texts drawn (partly) outside the figure: cut off in the PNG."""
    from matplotlib.text import Text
    fig.canvas.draw()
    r, box = fig.canvas.get_renderer(), fig.bbox
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
            and not (box.x0 - 1 <= t.get_window_extent(r).x0 and t.get_window_extent(r).x1 <= box.x1 + 1
                     and box.y0 - 1 <= t.get_window_extent(r).y0 and t.get_window_extent(r).y1 <= box.y1 + 1)]


def test_ablation_chart_is_a_forest_plot_of_the_claims_with_outliers_marked():
    """Each claim's paired difference with its 95% interval; 0 on the axis; the axis spans the ordinary
    intervals, not the +77 outlier, which is drawn to the edge and labelled; an unrun claim is said,
    not drawn as a zero; no bars; no text cut off."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig = figure(_summary())
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo < -0.66 and 6.93 < hi < 20.0  # every ordinary interval whole (0 inside); +77 is not
    texts = [t.get_text() for t in ax.texts]
    assert "off scale: +77.12 [+76.74, +77.50]" in texts and "not run yet" in texts
    assert not [p for p in ax.patches if isinstance(p, Rectangle)]  # no bars, so none of height 0
    dots = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert sorted(round(float(ln.get_xdata()[0]), 2) for ln in dots) == [-0.26, 1.5, 5.08]  # the unrun one: none
    right = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert right[-1] == "not run yet\ninconclusive (fewer than 2 seeds)" and "1 seed: no interval" in right[-2]
    assert _texts_inside(fig) == []
    plt.close(fig)


def test_quick_look_chart_keeps_its_long_title_inside():
    import matplotlib.pyplot as plt
    fig = figure(_summary(name="fashion_mnist-batchsize32-epochs1-imgsize32-trainsubset500-valsubset200"))
    assert "fashion_mnist-batchsize32" in fig._suptitle.get_text()
    assert _texts_inside(fig) == []
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
