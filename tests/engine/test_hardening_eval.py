"""Issue 25, items 1, 2, 12 and 13: subset sizes, a head wider than the classes, one validation subset
and one eval transform across eval and quantize, and a run extended with `--resume --epochs`.

One tiny run serves them all: trained 1 epoch with --num-classes 12 on 10-class Fashion-MNIST, then
extended to 2 epochs with --resume; its best.pt is the epoch-1 one (as when epoch 2 does not beat it).
"""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from engine_helpers import tiny_config
from ghostnetv3.cli import main
from ghostnetv3.data import BatchAugment, load_dataset
from ghostnetv3.deploy.quantize import scored_batches
from ghostnetv3.engine.config import TrainConfig, from_checkpoint_dict
from ghostnetv3.engine.splits import check_eval_classes, eval_aug_config
from ghostnetv3.engine.plot import lr_per_step, plot_run, read_metrics, schedule_changes
from ghostnetv3.engine.datasets import aug_config, load_datasets
from ghostnetv3.engine.train import train

SEED = 7  # engine_helpers.TINY
SUBSET = f"64 of 10000 images of the validation split (seeded subset: seed {SEED + 1}, the run's --seed {SEED} + 1)"


@pytest.fixture(scope="module")
def extended_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("wide")
    cfg = tiny_config(out, epochs=1, num_classes=12, train_subset=64, val_subset=64, batch_size=16)
    train(cfg)
    run = out / "run"
    shutil.copy(run / "best.pt", out / "best_epoch1.pt")
    train(cfg.replace(resume=str(run), epochs=2))
    shutil.copy(out / "best_epoch1.pt", run / "best.pt")  # epoch 2 did not beat epoch 1
    return run


# ----------------------------------------------------------------------------- 1. negative subsets

@pytest.mark.parametrize("argv", [["train", "--train-subset", "-5"], ["train", "--val-subset", "-5"],
                                  ["eval", "RUN", "--val-subset", "-5"]], ids=["train-subset", "val-subset", "eval"])
def test_negative_subset_is_refused_before_any_work(tmp_path, argv, capsys):
    argv = [str(tmp_path) if a == "RUN" else a for a in argv]
    if argv[0] == "train":
        argv += ["--data", "fashion-mnist", "--output", str(tmp_path), "--experiment", "neg"]
    assert main(argv) == 1
    flag = argv[argv.index("-5") - 1]
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"ghostnetv3 {argv[0]}: error: {flag} -5: give a positive number of images, or leave it unset to use "
        f"all of them"], captured.err
    assert captured.out == "" and not (tmp_path / "neg").exists()  # nothing probed or loaded, no run directory


def test_subset_rule_is_the_config_itself():
    for key in ("train_subset", "val_subset"):
        with pytest.raises(ValueError, match=f"--{key.replace('_', '-')} 0: give a positive number"):
            TrainConfig(**{key: 0})
    assert TrainConfig(train_subset=5, val_subset=None).train_subset == 5


# ----------------------------------------------------------------------------- 2. a wider head

def test_eval_and_predict_accept_the_wider_head_train_accepted(extended_run, tmp_path, capsys):
    state = torch.load(extended_run / "best.pt", map_location="cpu", weights_only=True)
    assert state["num_classes"] == 12 and len(state["classes"]) == 10
    assert main(["eval", str(extended_run), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[2:5]] == ["raw", "EMA", "fused"], out
    image = tmp_path / "shirt.png"
    Image.fromarray(np.full((28, 28), 128, np.uint8)).save(image)
    assert main(["predict", str(extended_run), str(image), "--topk", "12"]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if "%  " in line]) == 12


def test_eval_still_refuses_a_head_narrower_than_the_data(tmp_path):
    val = load_dataset("fashion-mnist", "val", image_size=16).subset(range(8))
    with pytest.raises(ValueError, match=r"has 10 classes \(T-shirt.*but the model in .* has 8 outputs"):
        check_eval_classes("fashion-mnist", val, {"num_classes": 8}, tmp_path / "best.pt")


# ----------------------------------------------------------------------------- 12. one subset, one transform

def test_eval_and_quantize_score_the_same_subset_and_say_which(extended_run, capsys):
    assert main(["eval", str(extended_run), "--val-subset", "64", "--no-progress", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["val_set"] == SUBSET and ev["val_subset_seed"] == SEED + 1
    assert main(["quantize", str(extended_run), "--calib-data", "fashion-mnist", "--calib-size", "16",
                 "--eval-size", "64"]) == 0
    out = capsys.readouterr().out
    assert f"eval: {SUBSET.replace('the validation split', 'fashion-mnist:val')};" in out, out
    fp32 = float(next(line for line in out.splitlines() if line.startswith("fp32")).split()[1])
    assert abs(fp32 - ev["fused"]["top1"]) <= 100 / 64 + 1e-9  # one model, the same 64 images (ONNX vs torch)

    # the very same images, through the very same transform
    state = torch.load(extended_run / "best.pt", map_location="cpu", weights_only=True)
    cfg = from_checkpoint_dict(state["config"]).replace(val_subset=64)
    engine_val = load_datasets(cfg, val_only=True)[1]
    engine_x = BatchAugment(aug_config(cfg, 1, train=False))(engine_val.images, torch.arange(64), 0)
    run_cfg = dict(state["config"], in_chans=1)
    batches, n, _ = scored_batches("fashion-mnist", "val", run_cfg, 64)
    xs, ys = zip(*batches)
    assert n == 64 and np.array_equal(np.concatenate(ys), engine_val.labels.numpy())
    assert np.array_equal(np.concatenate(xs), engine_x.numpy())


def test_eval_prints_its_transform_and_the_one_definition(extended_run, capsys):
    assert main(["eval", str(extended_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("eval transform: "))
    assert line.startswith("eval transform: bilinear resize of the short side to 16 px, centre crop 16x16 px "
                           "(crop_pct 1), mean (0.449,) std (0.226,)"), line
    assert "pretrained_cfg says bicubic" in line and "not this run's" in line
    cfg = TrainConfig(img_size=40, eval_crop_pct=0.8, mean=(0.5,), std=(0.25,))
    assert aug_config(cfg, 1, train=False) == eval_aug_config(cfg, 1) == eval_aug_config(cfg.to_dict(), 1)


# ----------------------------------------------------------------------------- 13. an extended run

def test_eval_and_predict_call_an_extended_run_by_its_name(extended_run, tmp_path, capsys):
    assert main(["eval", str(extended_run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    note = (f"note: {extended_run / 'best.pt'} was saved before the run was resumed with an extended schedule "
            f"(epochs 1 -> 2); config.yaml and last.pt hold the new values (not an edit)")
    assert note in err and "differs from the config inside" not in err, err
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    assert main(["predict", str(extended_run), str(image)]) == 0
    err = capsys.readouterr().err
    assert note in err and "differs from the config inside" not in err, err


def test_plot_draws_the_lr_each_step_used(extended_run, tmp_path):
    recs = read_metrics(extended_run)
    logged = {r["global_step"] - 1: r["lr"] for r in recs if r["type"] == "step"}  # the lr step g used
    assert len(logged) == 4  # log_interval 2, 8 steps
    xs, lrs = lr_per_step(extended_run, 4)
    drawn = {round(x * 4): lr for x, lr in zip(xs, lrs)}
    assert sorted(drawn) == list(range(8)) and schedule_changes(extended_run, 4) == [1.0]
    for step, lr in logged.items():
        assert drawn[step] == pytest.approx(lr, rel=1e-9), (step, drawn, logged)
    # epoch 1 ran to the end of a 1-epoch cosine; the extension jumps back up
    assert drawn[3] < 0.01 and drawn[4] > 2 * drawn[3]
    png = plot_run(extended_run, tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_follows_a_time_budget_that_re_planned_its_schedule(tmp_path):
    cfg = tiny_config(tmp_path, epochs=50, time_limit=0.1, train_subset=64, val_subset=32, batch_size=16,
                      log_interval=1, warmup_epochs=None)
    train(cfg)
    run = tmp_path / "run"
    recs = read_metrics(run)
    plans = [r["plan"]["total_steps"] for r in recs if r["type"] == "schedule"]
    assert len(plans) >= 2 and plans[0] == 200  # provisional 50 epochs, then planned to the budget
    xs, lrs = lr_per_step(run, 4)
    drawn = {round(x * 4): lr for x, lr in zip(xs, lrs)}
    logged = [r for r in recs if r["type"] == "step"]
    assert len(drawn) == logged[-1]["global_step"] == plans[-1]
    for r in logged:  # every step's lr, before and after each re-plan, lies on the drawn line
        assert drawn[r["global_step"] - 1] == pytest.approx(r["lr"], rel=1e-9), r
