"""The start-up note on re-parameterization branches at short budgets (issue 22, item 5): its numbers are
the budget chart's, it is said where the chart shows no gain, and not otherwise."""
import json

import numpy as np
from PIL import Image

import ghostnetv3
from ghostnetv3.engine.advice import BRANCH_ROWS, BRANCHES_PAY_FROM_STEPS, PLAIN_FLAGS, branch_budget_note
from tests.engine.engine_helpers import REPO, run_cli


def test_the_notes_numbers_are_the_budget_charts():
    rows = json.loads((REPO / "docs/results/budget.json").read_text())["rows"]
    chart = {(r["steps"], r["diff"]["mean"]) for r in rows if r["ingredient"] == "re-param"}
    for steps, _, delta, _ in BRANCH_ROWS:
        assert any(s == steps and abs(d - delta) < 0.006 for s, d in chart), (steps, delta, chart)
    assert BRANCHES_PAY_FROM_STEPS == max(s for s, _, _, _ in BRANCH_ROWS)


def test_the_note_is_said_for_branches_at_short_budgets_only():
    rep = ghostnetv3.create_model("ghostnetv3_050", num_classes=10)
    plain = ghostnetv3.create_model("ghostnetv3_050", num_classes=10, num_conv_branches=1, scale_branch=False,
                                    identity_branch=False)
    note = branch_budget_note(rep, 110)
    assert note.startswith("note: 110 planned steps with re-parameterization branches") and PLAIN_FLAGS in note
    assert "-0.26 [-0.66, +0.14] at 1,560 steps" in note
    assert branch_budget_note(plain, 110) == ""
    assert branch_budget_note(rep, BRANCHES_PAY_FROM_STEPS + 1) == ""


def test_a_new_user_with_data_and_epochs_hears_it(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "d" / c / f"{i}.png")
    r = run_cli(["train", "--model", "ghostnetv3_050", "--data", str(tmp_path / "d"), "--epochs", "1",
                 "--batch-size", "4", "--channels-last", "false", "--threads", "1", "--output", str(tmp_path / "r")])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "planned steps with re-parameterization branches" in r.stdout and PLAIN_FLAGS in r.stdout
