"""`ghostnetv3 train` as a timm user types it: aliases, help, threads, the end-of-run summary, resume."""
import argparse
import json

import pytest

from cli_helpers import cli
from ghostnetv3.cli import build_parser, main
from ghostnetv3.engine import flags as F
from ghostnetv3.engine.cli import config_from_args, default_threads
from ghostnetv3.engine.config import TrainConfig


def test_train_prints_threads_summary_and_json(tiny_run):
    run_dir, r = tiny_run
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "threads: 1 per process (from OMP_NUM_THREADS)"
    assert any(line.startswith("done: best top1 ") and "at epoch" in line and "weights, fused" in line
               for line in lines), r.stdout
    assert any(line.startswith("next: ghostnetv3 eval ") and "ghostnetv3 predict" in line for line in lines)
    summary = json.loads(lines[-1])  # scripts read the last line
    assert summary["run_dir"] == str(run_dir) and summary["epoch"] == 2
    # timm's spellings landed on the right keys
    cfg = (run_dir / "config.yaml").read_text()
    for line in ("batch_size: 16", "workers: 0", "drop_rate: 0.1", "img_size: 32", "in_chans: 1",
                 "data: fashion-mnist"):
        assert line in cfg.splitlines(), line


def test_resume_of_a_finished_run_trains_nothing(tiny_run):
    run_dir, _ = tiny_run
    before = (run_dir / "metrics.jsonl").read_text(), (run_dir / "last.pt").read_bytes()
    for target in (run_dir, run_dir / "last.pt"):  # a run directory, or timm's habit: the checkpoint file
        r = cli("train", "--resume", target)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "is finished: it trained all 2 of 2 epochs; nothing to train" in r.stdout
        assert "--epochs N" in r.stdout
    assert ((run_dir / "metrics.jsonl").read_text(), (run_dir / "last.pt").read_bytes()) == before
    r = cli("train", "--resume", run_dir / "best.pt")
    assert r.returncode == 1 and "holds weights only" in r.stderr and f"--resume {run_dir}" in r.stderr


def _cfg(argv):
    args = build_parser().parse_args(["train", *argv])
    return config_from_args(args)


def test_timm_spellings_are_aliases():
    cfg = _cfg(["-b", "64", "-j", "2", "--amp", "--drop", "0.3", "--input-size", "1", "48", "48",
                "--crop-pct", "0.9", "--data-dir", "elpv", "--no-model-ema", "--initial-checkpoint", "w.pt",
                "--train-interpolation", "bilinear"])
    assert (cfg.batch_size, cfg.workers, cfg.drop_rate, cfg.in_chans, cfg.img_size) == (64, 2, 0.3, 1, 48)
    assert (cfg.eval_crop_pct, cfg.data, cfg.model_ema, cfg.init_checkpoint) == (0.9, "elpv", False, "w.pt")
    assert cfg.amp in ("bf16", "fp16")  # bare --amp: mixed precision on (bf16 on CPU)
    assert _cfg(["--input-size", "40"]).img_size == 40 and _cfg(["--input-size", "40"]).in_chans is None
    assert _cfg(["--amp", "none", "--model_ema", "false"]).amp == "none"  # underscores still work


@pytest.mark.parametrize("typo,meant", [("--data-dri", "--data-dir"), ("--lr-min", "--min-lr"),
                                        ("--input-siz", "--input-size"), ("--batchsize", "--batch-size")])
def test_unknown_flag_names_the_nearest_and_is_one_line(typo, meant, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", typo, "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].endswith(f"did you mean {meant}?"), err


def test_bad_input_size_is_explained(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--input-size", "3", "32", "48"])
    assert "only square images" in capsys.readouterr().err


def _help(*argv) -> str:
    r = cli(*argv, "--help", timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_train_help_groups_one_line_per_flag_choices_and_recipe_values():
    out = _help("train")
    for group in ("model:", "data and augmentation:", "optimisation:", "EMA (exponential moving average",
                  "knowledge distillation (KD):", "run:"):
        assert any(line.startswith(group) for line in out.splitlines()), group
    assert "{none,bf16,fp16}" in out and "{kl,soft-ce,hard}" in out and "{rrc,pad_crop,none}" in out
    # every recipe key has words, not just a default
    parser = build_parser()._subparsers._group_actions[0].choices["train"]
    for action in parser._actions:
        if action.dest.startswith("key_") and action.help is not argparse.SUPPRESS:
            assert not action.help.startswith("(default"), action.option_strings
            assert len(action.help.split(" (default")[0]) > 8, action.option_strings
    assert "--lr X" in out and "peak lr (after warmup)" in out
    rec = " ".join(_help("train", "-c", "recipes/fashion_mnist.yaml").split())  # help lines wrap anywhere
    assert "(recipe: 'ghostnetv3_050')" in rec and "(recipe: 32)" in rec  # model, img_size of that recipe


def test_cache_teacher_help_has_no_training_flags():
    out = _help("cache-teacher")
    for flag in ("--epochs", "--opt ", "--lr ", "--model-ema", "--kd-weight", "--resume"):
        assert flag not in out, flag
    for flag in ("--teacher ", "--data ", "--img-size", "--views", "--train-subset", "--seed"):
        assert flag in out, flag


def test_choices_are_the_ones_the_config_enforces():
    for key, allowed in F.CHOICES.items():
        for value in allowed:
            assert getattr(TrainConfig(**{key: value}), key) == value
        with pytest.raises(ValueError, match=key):
            TrainConfig(**{key: "nonsense"})


def test_fp16_on_cpu_fails_before_the_run_directory_exists(tmp_path, capsys):
    rc = main(["train", "--amp", "fp16", "--device", "cpu", "--output", str(tmp_path), "--experiment", "x"])
    assert rc == 1 and "--amp bf16" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_default_threads_are_the_cores_this_process_may_use(monkeypatch):
    import os
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
