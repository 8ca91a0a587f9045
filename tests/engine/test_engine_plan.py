"""The run plan: auto warmup / EMA horizon / layout, and a time budget that plans the schedule."""
import json

import torch
from timm.utils import ModelEmaV3

from ghostnetv3.engine.plan import (PLAN_FILE, RunPlan, TimeBudget, auto_ema_decay, choose_channels_last,
                                     ema_warmup_gamma,
                                      make_plan, prefer_channels_last)
from ghostnetv3.engine.config import TrainConfig, load_config
from ghostnetv3.engine.train import make_run_plan, train

from engine_helpers import load, tiny_config


def test_auto_keys_read_auto_and_plan_for_the_run():
    cfg = load_config(None, warmup_epochs="auto", model_ema_decay="auto", channels_last="auto", epochs=5)
    assert cfg.warmup_epochs is None and cfg.model_ema_decay is None and cfg.channels_last is None
    plan = make_plan(cfg, steps_per_epoch=100, channels_last=False)
    assert plan.total_steps == 500 and plan.warmup_steps == 25  # 5% of a 5-epoch run, not 3 epochs
    assert abs(plan.ema_decay - (1 - 1 / 50)) < 1e-12            # horizon 10% of 500 steps
    long = make_plan(TrainConfig(epochs=300), steps_per_epoch=100, channels_last=True)
    assert long.warmup_steps == 300                               # the paper's 3 of 300 epochs
    fixed = make_plan(TrainConfig(epochs=5, warmup_epochs=1, model_ema_decay=0.999), 100, False)
    assert fixed.warmup_steps == 100 and fixed.ema_decay == 0.999
    assert auto_ema_decay(10, 0.1) == 0.9                           # never shorter than 10 steps


def test_time_budget_plans_from_the_measured_rate():
    b = TimeBudget(60.0, calibration_steps=20)
    assert b.plan_total(20, 100.0) == 21         # already over: at least one more step
    assert b.due(20) and not b.due(19)
    assert b.plan_total(20, 2.0) == 600          # 10 steps/s for 60 s
    b.commit(600, 20, 2.0)
    assert not b.final and not b.due(59) and b.due(60)   # refined at 10% of the planned run
    # the run slowed to 8 steps/s after the first steps: 40 steps took 5 s, 53 s are left
    assert b.plan_total(60, 7.0) == 60 + int(53 * 8)
    b.commit(484, 60, 7.0)
    assert b.final and not b.due(10 ** 6)
    short = TimeBudget(1.0, calibration_steps=20)
    short.commit(short.plan_total(20, 0.5), 20, 0.5)  # a 40-step plan: no room to refine
    assert short.final


def test_time_limited_plan_is_kept_on_resume_and_epoch_plans_follow_the_config():
    cfg = TrainConfig(epochs=4, time_limit=1.0)
    saved = RunPlan(10, 123, 6, 0.99, True, 60.0, calibrated=True)
    assert make_run_plan(cfg, saved, 10, True) is saved
    assert not make_run_plan(cfg, None, 10, True).calibrated      # to be calibrated by the run
    extended = make_run_plan(TrainConfig(epochs=8), RunPlan(10, 40, 2, 0.9, False), 10, False)
    assert extended.total_steps == 80                             # --resume --epochs 8 extends


def test_channels_last_probe_leaves_model_and_rng_alone():
    from ghostnetv3 import create_model
    m = create_model("ghostnetv3_050", num_classes=4, in_chans=1, width=0.25).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    # no time bounds: on busy shared cores a 0.3 s step can take over 2 s, and this test times both layouts
    choice, times = choose_channels_last(m, (4, 1, 32, 32), 4, torch.device("cpu"), steps=1, long_step_s=float("inf"),
                                         max_seconds=float("inf"))
    assert isinstance(choice, bool) and set(times) == {"nchw", "channels_last"}
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert torch.equal(torch.rand(3), expected)


def test_channels_last_only_when_clearly_faster():
    assert prefer_channels_last({"nchw": 1.0, "channels_last": 0.8})
    assert not prefer_channels_last({"nchw": 1.0, "channels_last": 0.95})  # within the noise: NCHW
    assert not prefer_channels_last({"nchw": 1.0, "channels_last": 1.2})
    assert prefer_channels_last({"nchw": 1.0, "channels_last": 0.95}, margin=0.0)


def test_time_limited_run_ends_its_schedule_at_the_plan(tmp_path):
    cfg = tiny_config(tmp_path, epochs=50, time_limit=0.05, warmup_epochs=None, model_ema_decay=None)
    summary = train(cfg)
    plan = json.loads((tmp_path / "run" / PLAN_FILE).read_text())
    assert plan["calibrated"] and plan["time_limit_s"] == 3.0
    state = load(tmp_path / "run" / "last.pt")
    assert state["global_step"] == plan["total_steps"] < 50 * 8   # planned to the budget, far below 50 epochs
    assert state["plan"] == plan
    assert abs(summary["lr"] - cfg.min_lr) < 1e-9                 # the cosine ended, it was not cut off
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["type"] == "epoch" and recs[-1]["global_step"] == plan["total_steps"]


def test_ema_warmup_reaches_an_auto_decay_at_its_horizon():
    """timm's ramp 1 − (1 + step/γ)^(−2/3) with γ = 1 stays below a 156-step horizon's decay for
    1,948 steps (so the horizon did nothing in a 1,560-step run); with ema_warmup_gamma it gets there
    at step ~156 and the cap holds from then on."""
    decay = auto_ema_decay(1560, 0.1)
    timm_ramp = ModelEmaV3(torch.nn.Linear(1, 1), decay=decay, use_warmup=True)
    assert timm_ramp.get_decay(1560) < decay
    ours = ModelEmaV3(torch.nn.Linear(1, 1), decay=decay, use_warmup=True, warmup_gamma=ema_warmup_gamma(decay, True))
    assert ours.get_decay(150) < decay and ours.get_decay(160) == decay and ours.get_decay(1560) == decay
    assert ours.get_decay(10) > timm_ramp.get_decay(10)
    assert ema_warmup_gamma(0.9998, False) == 1.0          # a decay the user gave keeps timm's ramp
