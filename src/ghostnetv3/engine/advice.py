"""What the recorded grids say about a run's ingredients at its budget, said at start-up.

The numbers are the re-parameterization rows of the budget chart (docs/results/budget.json, made by
`ghostnetv3 ablate --budget-chart` from the recorded grids); tests/engine/test_engine_advice.py
checks that they still match it. Below BRANCHES_PAY_FROM_STEPS planned steps no grid has shown the
branches paying, so a run that has them (GhostNetV3's default) is told what they are expected to cost
there and how to turn them off. Nothing is changed behind the user's back: the note only advises.
"""
from __future__ import annotations

import torch.nn as nn

from ghostnetv3.rep import RepConv2d

# (optimizer steps per run, branch init, mean delta top-1 of 3 branches + scale + identity vs the plain
# network, its 95% interval) on Fashion-MNIST, GhostNetV3-0.5 at 32 px
BRANCH_ROWS = ((93, "gamma = 1", -13.45, (-28.82, 1.92)),
               (624, "gamma = 1", -1.65, (-14.36, 11.06)),
               (1560, "gamma = 1/sqrt(n)", -0.26, (-0.66, 0.14)))
# the largest budget measured without a gain; raise it when a longer grid shows one (or lower it)
BRANCHES_PAY_FROM_STEPS = 1560
PLAIN_FLAGS = "--num-conv-branches 1 --scale-branch false --identity-branch false"


def has_parallel_branches(model: nn.Module) -> bool:
    """True when some re-parameterized conv sums more than one branch (one conv+BN per site is the plain net)."""
    return any(isinstance(m, RepConv2d) and m.num_branches > 1 for m in model.modules())


def branch_budget_note(model: nn.Module, total_steps: int) -> str:
    """A one-paragraph note when `model` trains with re-parameterization branches for fewer steps than any
    recorded grid has shown them paying at; '' otherwise."""
    if total_steps > BRANCHES_PAY_FROM_STEPS or not has_parallel_branches(model):
        return ""
    rows = "; ".join(f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}] at {s:,} steps ({init})"
                     for s, init, d, (lo, hi) in BRANCH_ROWS)
    return (f"note: {total_steps:,} planned steps with re-parameterization branches. In our recorded grids "
            f"(Fashion-MNIST, docs/results/budget.md) the branches gained nothing up to {BRANCHES_PAY_FROM_STEPS:,} "
            f"steps (branches - plain network, top-1: {rows}) and cost ~30% more training time; for the plain "
            f"network (the same fused model) add {PLAIN_FLAGS}")
