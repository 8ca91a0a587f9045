"""Reports rebuilt from what is recorded (no training): `--report-only`, the budget chart
(`--budget-chart`, issue 22 item 4), a plan's recipe found beside the plan, the quick-look report
(issue 25 item 15), and docs/results saying what its reports say."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from ghostnetv3.ablate import load_plan
from ghostnetv3.ablate import runner as runner_mod
from ghostnetv3.ablate.budget import collect
from ghostnetv3.ablate.budget import to_markdown as to_markdown_budget
from ghostnetv3.ablate.plan import config_hash, with_budget
from ghostnetv3.ablate.report import summarize, to_markdown, write_report
from ghostnetv3.cli import main

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
RECIPE = str(ROOT / "recipes" / "fashion_mnist.yaml")
ARMS = [{"name": "conv", "set": {"mixup": 0.8, "num_conv_branches": 1}},
        {"name": "paper", "ref": "conv", "set": {"num_conv_branches": 1}},
        {"name": "rep", "ref": "paper", "set": {"num_conv_branches": 3}},
        {"name": "kd", "ref": "rep", "kd": "cached", "set": {"num_conv_branches": 3}}]
CLAIMS = [{"claim": "Mixup hurts", "arm": "paper", "ref": "conv", "ingredient": "no-mixup-cutmix"},
          {"claim": "branches help", "arm": "rep", "ref": "paper", "ingredient": "re-param", "variant": "3 branches"},
          {"claim": "KD helps", "arm": "kd", "ref": "rep", "ingredient": "kd"}]
TEACHER = {"views": 1, "set": {"model": "resnet18"}}


def write_plan(path: Path, results: Path, **changes) -> Path:
    plan = {"name": "g", "recipe": RECIPE, "description": "Three epochs on 2,000 images per run.",
            "common": {"train_subset": 2000, "batch_size": 64, "epochs": 3}, "seeds": 3,
            "output": str(path.parent / "runs"), "results_dir": str(results), "arms": ARMS, "claims": CLAIMS,
            "teacher": TEACHER}
    plan.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def fake_results(plan, scores: dict[str, list[float]], global_step=None, teacher_top1=91.0) -> dict:
    """Finished runs as the runner records them (top-1 per seed), without training anything."""
    runner = runner_mod.Runner(plan, log=lambda *a: None)
    arms = {}
    for name, tops in scores.items():
        arm = plan.arm(name)
        arms[name] = [{"arm": name, "seed": s, "top1": t, "raw_top1": t, "ema_top1": None, "wall_s": 10.0,
                       "harness_wall_s": 12.0, "config_hash": config_hash(runner.arm_config(arm, s)),
                       **({"global_step": global_step} if global_step else {})} for s, t in enumerate(tops)]
    return {"arms": arms, "teacher": {"model": "lite", "top1": teacher_top1}}


SCORES = {"conv": [80.0, 81.0, 80.5], "paper": [85.0, 85.5, 85.2], "rep": [84.0, 84.8, 84.1],
          "kd": [85.0, 86.0, 85.3]}


# ------------------------------------------------------------------------------------ the plan's recipe

def test_a_plans_recipe_is_found_beside_the_plan_file(tmp_path, monkeypatch):
    plans = tmp_path / "plans"
    plans.mkdir()
    base = yaml.safe_load(Path(RECIPE).read_text())
    (plans / "base.yaml").write_text(yaml.safe_dump(dict(base, lr=0.123)))
    path = write_plan(plans / "plan.yaml", tmp_path / "res", recipe="base.yaml", arms=ARMS[:2], claims=[],
                      teacher=None)
    monkeypatch.chdir(tmp_path)  # not the plan's folder: the recipe is still the one beside the plan
    plan = load_plan(path)
    assert Path(plan.recipe).resolve() == (plans / "base.yaml").resolve()
    assert plan.config(plan.arm("paper"), 0).lr == 0.123
    # the old behaviour stays the fallback: a path relative to the working directory
    monkeypatch.chdir(ROOT)
    plan = load_plan(write_plan(plans / "plan.yaml", tmp_path / "res", recipe="recipes/fashion_mnist.yaml",
                                arms=ARMS[:2], claims=[], teacher=None))
    assert plan.recipe == "recipes/fashion_mnist.yaml"
    write_plan(plans / "plan.yaml", tmp_path / "res", recipe="nowhere.yaml", arms=ARMS[:2], claims=[], teacher=None)
    with pytest.raises(FileNotFoundError, match="recipe not found: nowhere.yaml .looked beside the plan"):
        load_plan(plans / "plan.yaml")


def test_the_shipped_20k_plan_still_matches_its_recorded_runs(tmp_path, monkeypatch):
    """The recipe lookup and the `ingredient:` tags change no config hash: every recorded run of the
    20k grid without a teacher cache (whose path depends on --output) still counts as finished."""
    monkeypatch.chdir(ROOT)
    plan = load_plan("recipes/ablation_fashion_mnist_20k.yaml", output=str(tmp_path))
    no_kd = [a for a in plan.arms if a.kd is None]
    assert runner_mod.Runner(plan, log=lambda *a: None).restore_recorded() == len(no_kd) * plan.seeds == 27


# ------------------------------------------------------------------------------------ quick look, report-only

def test_a_quick_look_report_does_not_keep_the_plans_budget_sentence(tmp_path):
    plan = load_plan(write_plan(tmp_path / "plan.yaml", tmp_path / "res"))
    full = to_markdown(summarize(plan, fake_results(plan, SCORES)))
    assert "Three epochs on 2,000 images per run." in full
    quick = with_budget(plan, {"epochs": 1})
    md = to_markdown(summarize(quick, fake_results(quick, SCORES)))
    assert "Three epochs" not in md
    assert "A quick look: the arms of" in md and "its budget overridden (epochs=1)" in md
    assert "31 optimizer steps per run (the budget: 2000 images // batch 64 × 1 epochs)" in md


def test_report_only_rewrites_the_report_from_the_recorded_runs_without_training(tmp_path, monkeypatch, capsys):
    path = write_plan(tmp_path / "plan.yaml", tmp_path / "res")
    plan = load_plan(path)
    write_report(plan, fake_results(plan, SCORES, global_step=93))
    recorded = json.loads((tmp_path / "res" / "ablation_g.json").read_text())
    recorded.update(machine="the grid's machine", updated="2026-11-25 10:00 UTC")
    (tmp_path / "res" / "ablation_g.json").write_text(json.dumps(recorded))
    monkeypatch.setattr(runner_mod.Runner, "_call", lambda *a: pytest.fail("--report-only trained something"))
    # a default changed since (here: the plan's lr): the recorded runs no longer match the plan's config
    write_plan(path, tmp_path / "res", common={"train_subset": 2000, "batch_size": 64, "epochs": 3, "lr": 0.3})
    assert main(["ablate", "-c", str(path), "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "report: " in out and f"budget chart: {tmp_path / 'res' / 'budget.md'}" in out
    s = json.loads((tmp_path / "res" / "ablation_g.json").read_text())
    assert s["finished_runs"] == 12 and s["machine"] == "the grid's machine" and s["updated"] == recorded["updated"]
    assert [r["top1"] for r in s["arms"][1]["runs"]] == SCORES["paper"]
    md = (tmp_path / "res" / "ablation_g.md").read_text()
    assert "12 of these runs are shown as the report recorded them" in md
    assert "- paper: s0: 85.00, s1: 85.50, s2: 85.20" in md


# ------------------------------------------------------------------------------------ the budget chart

def _grid(tmp_path: Path, name: str, train_subset: int, scores, global_step=None, **changes) -> None:
    path = write_plan(tmp_path / f"{name}.yaml", tmp_path / "res", name=name,
                      common={"train_subset": train_subset, "batch_size": 64, "epochs": 3}, **changes)
    plan = load_plan(path)
    write_report(plan, fake_results(plan, scores, global_step=global_step, teacher_top1=train_subset / 100))


def test_the_budget_chart_is_built_from_the_recorded_grids(tmp_path, capsys):
    _grid(tmp_path, "small", 2000, SCORES)  # no recorded steps: from its budget, 2000 // 64 * 3
    big = {k: [v + (1.0 if k == "rep" else 0.0) for v in vs] for k, vs in SCORES.items()}
    _grid(tmp_path, "big", 9000, big, global_step=4700)
    _grid(tmp_path, "untagged", 4000, SCORES, claims=[])
    plan = load_plan(write_plan(tmp_path / "q.yaml", tmp_path / "res", name="q"))
    quick = with_budget(plan, {"epochs": 1})
    write_report(quick, fake_results(quick, SCORES))

    assert main(["ablate", "--budget-chart", "--results-dir", str(tmp_path / "res")]) == 0
    assert capsys.readouterr().out.startswith(f"budget chart: {tmp_path / 'res' / 'budget.md'}")
    b = json.loads((tmp_path / "res" / "budget.json").read_text())
    assert [(g["name"], g["steps"]) for g in b["grids"]] == [("small", 93), ("big", 4700)]
    assert b["grids"][0]["steps_from"].startswith("the budget")
    assert b["grids"][1]["steps_from"] == "recorded by the runs"
    assert b["left_out"] == ["ablation_q-epochs1.json: a quick look (its plan's budget overridden)"]
    rep = [r for r in b["rows"] if r["ingredient"] == "re-param"]
    assert [(r["steps"], round(r["diff"]["mean"], 2), r["variant"]) for r in rep] == \
        [(93, -0.93, "3 branches"), (4700, 0.07, "3 branches")]
    kd = [r for r in b["rows"] if r["ingredient"] == "kd"]
    assert [r["teacher"] for r in kd] == ["lite 20.0%", "lite 90.0%"]  # each grid's own teacher
    md = (tmp_path / "res" / "budget.md").read_text()
    assert "| 4,700 | big | 3 branches | rep − paper | +0.07 [" in md
    assert "| [big](ablation_big.md) | fashion-mnist | 4,700 (recorded by the runs) | 12 of 12 | lite 90.0% |" in md
    assert "## linear branches (re-param)\n\nNot measured yet" in md
    assert "## EMA\n\nNot measured yet" in md  # no 0-height stand-ins for what was not measured
    assert (tmp_path / "res" / "budget.png").read_bytes()[:4] == b"\x89PNG"


def test_a_grid_in_progress_sits_at_the_steps_its_finished_runs_recorded(tmp_path):
    """All training images (no train_subset: the budget alone does not fix the steps): the runs
    finished so far place the grid; claims whose arms have not run are listed, not drawn."""
    full = {"train_subset": None, "batch_size": 128, "epochs": 10}
    plan = load_plan(write_plan(tmp_path / "full.yaml", tmp_path / "res", name="full", common=full))
    write_report(plan, fake_results(plan, {"conv": SCORES["conv"], "paper": SCORES["paper"][:2]}, global_step=4680))
    empty = load_plan(write_plan(tmp_path / "empty.yaml", tmp_path / "res", name="empty", common=full))
    write_report(empty, fake_results(empty, {}))
    b = collect(tmp_path / "res")
    assert [(g["name"], g["steps"], g["finished_runs"]) for g in b["grids"]] == [("full", 4680, 5)]
    assert b["left_out"] == ["ablation_empty.json: steps per run unknown (not recorded by the runs, and the budget "
                             "does not fix the number of training images; a finished run records them)"]
    rows = {r["ingredient"]: r for r in b["rows"]}
    assert rows["no-mixup-cutmix"]["diff"]["n"] == 2 and rows["no-mixup-cutmix"]["steps"] == 4680
    assert rows["kd"]["steps"] == 4680 and rows["kd"]["diff"]["mean"] is None  # not run yet: no point
    assert "| 4,680 | full | – | kd − rep | not run yet | 0 |" in to_markdown_budget(b)


def test_the_budget_chart_draws_steps_on_a_log_axis_and_nothing_for_unmeasured_ingredients(tmp_path):
    import matplotlib.pyplot as plt

    from ghostnetv3.ablate.charts import budget_figure
    _grid(tmp_path, "small", 2000, SCORES)
    _grid(tmp_path, "big", 9000, SCORES, global_step=4700)
    fig = budget_figure(collect(tmp_path / "res"))
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    rep = panels["re-parameterization branches"]
    assert rep.get_xscale() == "log" and list(rep.get_xticks()) == [93, 4700]
    lo, hi = rep.get_ylim()
    assert lo < 0.0 < hi  # 0 is always on the axis
    ema = panels["EMA"]
    assert not ema.lines and any(t.get_text() == "not measured yet" for t in ema.texts)
    plt.close(fig)


def test_budget_chart_needs_a_tagged_grid_and_ablate_needs_a_plan(tmp_path, capsys):
    (tmp_path / "res").mkdir()
    assert main(["ablate", "--budget-chart", "--results-dir", str(tmp_path / "res")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ghostnetv3 ablate: error: no recorded grid in") and "ingredient:" in err
    assert main(["ablate"]) == 1
    assert capsys.readouterr().err.strip() == \
        "ghostnetv3 ablate: error: pass the plan: -c recipes/ablation_NAME.yaml (or --budget-chart alone)"


def test_an_unknown_ingredient_tag_is_refused(tmp_path):
    path = write_plan(tmp_path / "plan.yaml", tmp_path / "res",
                      claims=[{"claim": "x", "arm": "rep", "ref": "paper", "ingredient": "dropout"}])
    with pytest.raises(ValueError, match="ingredient 'dropout' is not one of the budget chart's: no-mixup-cutmix, "
                                         "re-param, ema, kd, linear-branches"):
        load_plan(path)


# ------------------------------------------------------------------------------------ docs/results

def test_the_committed_budget_chart_is_what_the_harness_builds_from_the_recorded_grids():
    b = json.loads((RESULTS / "budget.json").read_text())
    assert b == json.loads(json.dumps(collect(RESULTS)))  # generated, not hand-edited
    steps = {g["name"]: g["steps"] for g in b["grids"]}
    assert steps["fashion_mnist_20k"] == 1560  # recorded by the runs, not typed in
    kd = {r["grid"]: r["teacher"] for r in b["rows"] if r["ingredient"] == "kd"}
    assert kd["fashion_mnist"] == "tf_efficientnet_lite0 73.7%"  # each KD row names its grid's teacher
    assert kd["fashion_mnist_20k"] == "tf_efficientnet_lite0 90.3%"


def test_the_results_readme_states_the_run_counts_its_reports_hold():
    """Each row of docs/results/README.md's table that names a report and a run count says what that
    report's JSON holds (it said "28 of 33 runs" for a grid that had finished 39 of 39)."""
    rows = [ln for ln in (RESULTS / "README.md").read_text().splitlines() if ln.startswith("|")]
    checked = 0
    for row in rows:
        m = re.search(r"\((ablation_[\w]+)\.md\)", row)
        counts = re.search(r"(\d+) of (\d+) runs", row)
        if m and counts:
            s = json.loads((RESULTS / f"{m.group(1)}.json").read_text())
            assert (int(counts.group(1)), int(counts.group(2))) == (s["finished_runs"], s["planned_runs"]), row
            checked += 1
    assert checked >= 1


def test_the_budget_chart_names_the_teachers_score_through_the_students_view(tmp_path):
    plan = load_plan(write_plan(tmp_path / "v.yaml", tmp_path / "res", name="v"))
    results = fake_results(plan, SCORES, global_step=4700)
    results["teacher"].update(student_view_top1=88.5, student_img_size=32, teacher_input_size=96)
    write_report(plan, results)
    b = collect(tmp_path / "res")
    assert [r["teacher"] for r in b["rows"] if r["ingredient"] == "kd"] == ["lite 91.0% (88.5% on the student's view)"]
    assert "| lite 91.0% (88.5% on the student's view) |" in to_markdown_budget(b)
