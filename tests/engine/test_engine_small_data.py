"""A new user's own small folder (issue 25, item 10): the batch follows the data, no image is left out,
a run too short to learn says so, the layout probe is announced and bounded; and a time budget holds
for runs shorter than its 20 calibration steps (item 15)."""
import functools
import json

import numpy as np
import torch

from engine_helpers import load, run_cli, tiny_config
from ghostnetv3.engine.plan import (PLAN_FILE, TimeBudget, auto_batch_size, choose_channels_last, drop_last_batch,
                                      few_steps_warning, make_plan)
from ghostnetv3.engine.config import TrainConfig
from ghostnetv3.engine.train import train


def image_folder(root, per_class=60, classes=3, size=48):
    """A colour ImageFolder: `classes` folders of `per_class` random PNGs (180 images: 162 train / 18 val)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_auto_batch_gives_an_epoch_several_steps():
    assert auto_batch_size(162) == 16            # 10 steps, where 128 made 1
    assert auto_batch_size(60_000) == 128        # enough data: the default
    assert auto_batch_size(1024) == 128 and auto_batch_size(1023) == 64
    assert auto_batch_size(10) == 2              # never below 2 images (BatchNorm)
    assert auto_batch_size(0) == 128             # unknown size (an iterable source)
    assert auto_batch_size(162, world_size=2) == 16 and auto_batch_size(60_000, world_size=3) == 126


def test_last_batch_is_kept_when_dropping_it_would_leave_out_many_images():
    assert not drop_last_batch(162, 128)         # 34 of 162 images: kept
    assert drop_last_batch(162, 16)              # 2 of 162 (1.2%): equal batches
    assert drop_last_batch(17, 8)                # a single image is never a batch
    assert drop_last_batch(60_000, 128)


def test_new_user_small_folder_cli(tmp_path):
    """`train --data DIR --epochs 3` on 162 colour images: batch 16 on the start-up line (10 steps per epoch,
    every image used), a warning that 30 steps are too few, and the probe announced before it runs."""
    data = image_folder(tmp_path / "data")
    r = run_cli(["train", "--data", str(data), "--epochs", "3", "--model", "test_efficientnet", "--img-size", "32",
                 "--output", str(tmp_path), "--experiment", "run"])
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    header = next(line for line in out if " train / " in line)
    assert "162 train / 18 val images | batch 16 (auto: 128 halved so that an epoch of 162 images has 10 steps) " \
           "| 10 steps/epoch x 3 |" in header
    assert any(line.startswith("warning: this run makes only 30 optimizer steps (10 per epoch of 16 images)")
               and "--epochs 10 gives 100 steps" in line for line in out)
    probe = [i for i, line in enumerate(out) if line.startswith("channels_last auto: ")]
    assert len(probe) == 2 and "timing train steps" in out[probe[0]] and "at most 20 s" in out[probe[0]]
    assert probe[1] < out.index(header)
    state = load(tmp_path / "run" / "last.pt")
    assert state["global_step"] == 30 and state["plan"]["batch_size"] == 16
    r = run_cli(["eval", str(tmp_path / "run")])                  # the saved config says batch_size: auto
    assert r.returncode == 0, r.stderr[-2000:]
    assert "top-1" in r.stdout and "18 images" in r.stdout


def test_explicit_batch_is_kept_and_its_large_remainder_trained(tmp_path):
    data = image_folder(tmp_path / "data")
    r = run_cli(["train", "--data", str(data), "--epochs", "1", "--model", "test_efficientnet", "--img-size", "32",
                 "-b", "128", "--channels-last", "false", "--output", str(tmp_path), "--experiment", "run"])
    assert r.returncode == 0, r.stderr[-2000:]
    header = next(line for line in r.stdout.splitlines() if " train / " in line)
    assert "| batch 128, last batch of 34 kept | 2 steps/epoch x 1 |" in header
    assert "warning: this run makes only 2 optimizer steps" in r.stdout


def test_few_steps_warning_only_for_short_runs_from_scratch():
    cfg = TrainConfig(epochs=3)
    assert few_steps_warning(cfg, make_plan(cfg, 10, False)).startswith("warning: this run makes only 30 ")
    assert few_steps_warning(cfg, make_plan(TrainConfig(epochs=10), 10, False)) is None
    tuned = TrainConfig(epochs=3, init_checkpoint="w.pt")
    assert few_steps_warning(tuned, make_plan(tuned, 10, False)) is None


def _probe_args():
    from ghostnetv3 import create_model
    m = create_model("ghostnetv3_050", num_classes=4, in_chans=1, width=0.25).train()
    return m, (4, 1, 32, 32), 4, torch.device("cpu")


def test_layout_probe_is_skipped_when_one_step_is_already_long():
    model, shape, k, dev = _probe_args()
    before = {n: v.clone() for n, v in model.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    choice, times = choose_channels_last(model, shape, k, dev, long_step_s=0.0)
    assert choice is False and set(times) == {"first_step"}       # one timed step, then NCHW
    assert all(torch.equal(before[n], v) for n, v in model.state_dict().items())
    assert torch.equal(torch.rand(3), expected)                    # the run's random stream untouched


def test_layout_probe_stops_at_its_time_cap():
    model, shape, k, dev = _probe_args()
    choice, times = choose_channels_last(model, shape, k, dev, long_step_s=float("inf"), max_seconds=0.0)
    assert choice is False and set(times) == {"nchw"}              # capped before channels_last was timed: NCHW


def test_layout_probe_result_is_said_in_words(tmp_path, tiny_sets, capsys, monkeypatch):
    import ghostnetv3.engine.train as engine_train
    # every step counts as long: the probe stops after one and says why
    monkeypatch.setattr(engine_train, "choose_channels_last", functools.partial(choose_channels_last, long_step_s=0.0))
    train(tiny_config(tmp_path, epochs=1, channels_last=None), train_set=tiny_sets[0], val_set=tiny_sets[1])
    out = capsys.readouterr().out
    assert "channels_last auto: timing train steps of a copy of the model in each layout" in out
    assert "channels_last auto: NCHW (not probed: one train step already takes" in out
    assert "--channels-last true to train channels_last" in out


def test_time_budget_calibrates_within_a_short_provisional_plan():
    b = TimeBudget(60.0, provisional_steps=3)
    assert b.calibration_steps == 3 and b.due(3) and not b.due(2)
    assert TimeBudget(60.0, provisional_steps=500).calibration_steps == 20
    slow = TimeBudget(600.0)                    # 49 s steps: 20 of them would overrun a 10-minute budget
    assert not slow.due_by_time(59.0) and slow.due_by_time(98.0)
    slow.commit(slow.plan_total(2, 98.0), 2, 98.0)
    assert not slow.due_by_time(1e9)            # only the first calibration is due by time


def test_time_limit_applies_to_a_run_under_20_steps(tmp_path, tiny_sets):
    """--epochs 2 of 1 step each with --time-limit: the run used to end after its 2 provisional steps,
    the budget ignored; now it calibrates at step 2 and trains to the budget."""
    cfg = tiny_config(tmp_path, epochs=2, time_limit=0.04, warmup_epochs=None, model_ema_decay=None)
    summary = train(cfg, train_set=tiny_sets[0].subset(range(32)), val_set=tiny_sets[1])
    plan = json.loads((tmp_path / "run" / PLAN_FILE).read_text())
    assert plan["calibrated"] and plan["time_limit_s"] == 2.4
    state = load(tmp_path / "run" / "last.pt")
    assert state["global_step"] == plan["total_steps"] > 2
    assert abs(summary["lr"] - cfg.min_lr) < 1e-9                 # the planned cosine ran to its end


def test_resume_keeps_the_auto_batch_the_run_started_with(tmp_path, tiny_sets, capsys):
    """`batch_size: auto` is decided once (kept in the plan): a resume whose data would give another batch
    continues with the run's own."""
    train(tiny_config(tmp_path, batch_size=None, epochs=1), train_set=tiny_sets[0], val_set=tiny_sets[1])
    assert "| batch 32 (auto: 128 halved so that an epoch of 256 images has 8 steps) |" in capsys.readouterr().out
    train(tiny_config(tmp_path, batch_size=None, epochs=2, resume=str(tmp_path / "run")),
          train_set=tiny_sets[0].subset(range(128)), val_set=tiny_sets[1])           # auto alone would say 16
    assert "| batch 32 (auto: 128 halved so that an epoch of 128 images has 4 steps) |" in capsys.readouterr().out
    assert load(tmp_path / "run" / "last.pt")["plan"]["batch_size"] == 32
