"""`engine/run.py`: one object reads a run directory (or one of its checkpoint files) and reads each
checkpoint file once per command (issue 24, item 2)."""
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from engine_helpers import load, tiny_config
from ghostnetv3.cli import main
from ghostnetv3.data.inputspec import InputSpec
from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine.config import from_checkpoint_dict
from ghostnetv3.engine.plan import RunPlan
from ghostnetv3.engine.run import Run
from ghostnetv3.engine.state import TrainState
from ghostnetv3.engine.train import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_sets):
    """A finished 1-epoch run: best.pt, last.pt, config.yaml, plan.json, metrics.jsonl."""
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(out, epochs=1), train_set=tiny_sets[0], val_set=tiny_sets[1])
    return out / "run"


def _reads(monkeypatch) -> list[str]:
    """The names of the files torch.load opens from now on (safeload, mmap peeks and all)."""
    opened, real = [], torch.load

    def counting(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):
            opened.append(Path(f).name)
        return real(f, *args, **kwargs)
    monkeypatch.setattr(torch, "load", counting)
    return opened


def test_run_answers_what_train_wrote(tiny_run):
    run = Run(tiny_run)
    best, last = load(tiny_run / ckpt_io.BEST), load(tiny_run / ckpt_io.LAST)
    written = yaml.safe_load((tiny_run / ckpt_io.CONFIG_FILE).read_text())
    assert run.checkpoint_path == tiny_run / ckpt_io.BEST  # best.pt first
    assert run.config == from_checkpoint_dict(best["config"]) == from_checkpoint_dict(written)
    assert run.config.model == "test_efficientnet" and run.config.img_size == 16
    assert run.classes == [str(c) for c in best["classes"]] and len(run.classes) == 10
    assert (run.model_name, run.num_classes, run.in_chans) == ("test_efficientnet", 10, 1)
    assert run.plan == RunPlan.from_dict(json.loads((tiny_run / ckpt_io.PLAN_FILE).read_text()))
    assert run.plan.steps_per_epoch == 8
    # the weights: the rule's pick (the ones validation picked), and each kind when asked
    picked = "state_dict_ema" if best["best_source"] == "ema" else "state_dict"
    for which, key in ((None, picked), ("raw", "state_dict"), ("ema", "state_dict_ema")):
        got = run.weights(which)
        assert got.keys() == best[key].keys() and all(torch.equal(got[k], best[key][k]) for k in got)
    assert run.choose().weights == best["best_source"]
    raw_last = Run(tiny_run, checkpoint="last").weights("raw")
    assert all(torch.equal(raw_last[k], last["state_dict"][k]) for k in raw_last)
    assert run.input_spec == InputSpec.from_config(written, in_chans=1)
    state = run.train_state("top1")
    assert isinstance(state, TrainState)
    assert (state.epoch, state.step, state.global_step) == (last["epoch"], last["step"], last["global_step"])
    assert (state.epoch, state.step, state.global_step) == (1, 0, 8)
    assert state.best["value"] == last["best_top1"]


def test_a_checkpoint_file_is_a_run_too(tiny_run):
    run = Run(tiny_run / ckpt_io.LAST)
    assert run.checkpoint_path == tiny_run / ckpt_io.LAST and run.choose().checkpoint == "file"
    assert run.config == Run(tiny_run).config and run.classes == Run(tiny_run).classes
    assert run.dir == tiny_run and run.last is run.state  # one read serves both
    with pytest.raises(ValueError, match="is a file already"):
        Run(tiny_run / ckpt_io.LAST, checkpoint="best").state
    with pytest.raises(FileNotFoundError, match="no such run directory or checkpoint"):
        Run(tiny_run / "nope.pt").state


def test_each_file_is_read_once(tiny_run, monkeypatch):
    opened = _reads(monkeypatch)
    run = Run(tiny_run, checkpoint="last")
    run.config, run.classes, run.weights(), run.weights("raw"), run.input_spec, run.train_state("top1")
    run.report_config_edits()
    assert opened == [ckpt_io.LAST]


def test_eval_reads_last_pt_once(tiny_run, monkeypatch, capsys):
    opened = _reads(monkeypatch)
    assert main(["eval", str(tiny_run), "--checkpoint", "last", "--no-progress"]) == 0
    assert "fused" in capsys.readouterr().out
    assert opened.count(ckpt_io.LAST) == 1 and ckpt_io.BEST not in opened, opened


def test_export_reads_its_checkpoint_once(tiny_run, tmp_path, monkeypatch, capsys):
    """Before Run, export read best.pt five times (config, weights rule, state dict, load)."""
    opened = _reads(monkeypatch)
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "m.onnx"), "--checkpoint", "last"]) == 0
    assert "ok (tolerance" in capsys.readouterr().out
    assert opened.count(ckpt_io.LAST) == 1 and ckpt_io.BEST not in opened, opened
    opened.clear()
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "b.onnx")]) == 0
    assert opened.count(ckpt_io.BEST) == 1 and ckpt_io.LAST not in opened, opened


def test_resume_of_a_finished_run_reads_last_pt_once(tiny_run, monkeypatch, capsys):
    """`train --resume RUN` takes the run's config and sees it is finished from one read (was two)."""
    opened = _reads(monkeypatch)
    assert main(["train", "--resume", str(tiny_run)]) == 0
    assert "is finished: it trained all 1 of 1 epochs" in capsys.readouterr().out
    assert opened == [ckpt_io.LAST]


def test_resume_that_trains_reads_last_pt_once(tiny_run, tmp_path, monkeypatch, capsys):
    """`train --resume RUN --epochs 2` continues a 1-epoch run: the CLI's Run reads last.pt and the
    engine takes that same dict (it was read twice: once for the config, once by the loop)."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / ".lock").unlink(missing_ok=True)
    opened = _reads(monkeypatch)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert '"epoch": 2' in capsys.readouterr().out
    assert opened.count(ckpt_io.LAST) == 1, opened
