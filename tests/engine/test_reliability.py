"""Issue 15: nothing lost, no tracebacks — run-directory locking, full disks, unwritable outputs,
broken checkpoint files, config.yaml's one rule, and the inputs that used to pass silently.
Each test failed before the change it checks (see docs/reliability.md)."""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ghostnetv3 import cli, safeload
from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine import rundir
from ghostnetv3.engine.config import coerce, load_config
from ghostnetv3.engine.train import train
from ghostnetv3.errors import BadCheckpoint, RunDirBusy, SaveError, UserError

from engine_helpers import cli_args, env, load, popen_cli, run_cli, tiny_config


class _FullDisk(io.RawIOBase):
    """A file that takes `room` bytes and then fails like a full disk: torch's zip writer turns the
    OSError into RuntimeError('... unexpected pos ...'), exactly as on a real full filesystem."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.room:
            self.f.write(bytes(b[:self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)


def _fail_nth_save(monkeypatch, n: int, exc=None):
    real, calls = ckpt_io._write, []

    def write(obj, f):
        calls.append(1)
        if len(calls) != n:
            return real(obj, f)
        if exc is not None:
            raise exc
        torch.save(obj, _FullDisk(f, 1000))

    monkeypatch.setattr(ckpt_io, "_write", write)
    return calls


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny finished run (1 epoch): best.pt, last.pt, config.yaml, metrics.jsonl."""
    from ghostnetv3.data import load_dataset
    from ghostnetv3.engine.splits import subset
    from engine_helpers import TINY

    out = tmp_path_factory.mktemp("runs")
    tr = subset(load_dataset("fashion-mnist", "train", image_size=16), TINY["train_subset"], TINY["seed"])
    va = subset(load_dataset("fashion-mnist", "val", image_size=16), TINY["val_subset"], TINY["seed"] + 1)
    train(tiny_config(out, epochs=1), train_set=tr, val_set=va)
    return out / "run", (tr, va)


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file() and p.name != rundir.LOCK_FILE:
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


# ----------------------------------------------------------------------------- 1. locking

_HOLD = ("import sys, time; sys.path.insert(0, sys.argv[2]); from ghostnetv3.engine.rundir import lock_run_dir; "
         "lock_run_dir(sys.argv[1]); print('locked', flush=True); time.sleep(120)")


def _holder(run_dir: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir), str(Path(cli.__file__).parents[1])],
                         stdout=subprocess.PIPE, text=True, env=env())
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_process_gets_one_line_naming_the_pid_and_sigkill_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "twin"
    run_dir.mkdir()
    holder = _holder(run_dir)
    try:
        with pytest.raises(RunDirBusy, match=rf"{run_dir} is in use by process {holder.pid} .*kill {holder.pid}"):
            rundir.lock_run_dir(run_dir)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = rundir.lock_run_dir(run_dir)  # the OS dropped the killed holder's lock
    assert (run_dir / rundir.LOCK_FILE).read_text().strip() == str(os.getpid())
    lock.release()


def test_twin_train_and_live_resume_are_refused(tmp_path, trained_run):
    run_dir = _copy_run(trained_run[0], tmp_path / "run")
    holder = _holder(run_dir)  # stands in for a live `ghostnetv3 train` of that directory
    try:
        for args in (cli_args(tmp_path, experiment="run", epochs=1), ["--resume", str(run_dir), "--epochs", "2"]):
            r = run_cli(["train", *args])
            assert r.returncode == 1, r.stderr
            assert f"is in use by process {holder.pid}" in r.stderr
            assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        holder.kill()
        holder.wait()
    assert load(run_dir / "last.pt")["epoch"] == 1  # nothing was overwritten


def test_failed_start_leaves_no_empty_run_directory(tmp_path, trained_run):
    with pytest.raises(ValueError, match="--num-classes 3 is smaller than the 10 classes"):
        train(tiny_config(tmp_path, epochs=1, num_classes=3), train_set=trained_run[1][0], val_set=trained_run[1][1])
    assert not (tmp_path / "run").exists()
    assert rundir.held_dirs() == set()


# ----------------------------------------------------------------------------- 2. disk full

def test_disk_full_in_torch_zip_writer_is_one_line_and_resume_works(tmp_path, monkeypatch, trained_run):
    tr, va = trained_run[1]
    cfg = tiny_config(tmp_path, epochs=1, checkpoint_interval=2, model_ema=False)
    _fail_nth_save(monkeypatch, 2)  # torch.save on a full disk raises RuntimeError('unexpected pos')
    with pytest.raises(SaveError) as e:
        train(cfg, train_set=tr, val_set=va)
    msg = str(e.value)
    run_dir = tmp_path / "run"
    assert "(disk full)" in msg and "it needs about" in msg and "MB are free in" in msg, msg
    assert "the previous last.pt is intact" in msg and f"ghostnetv3 train --resume {run_dir}" in msg
    assert "\n" not in msg
    assert sorted(p.name for p in run_dir.iterdir() if ".tmp" in p.name) == [], "temp file left behind"
    assert load(run_dir / "last.pt")["global_step"] == 2
    monkeypatch.undo()
    out = train(cfg.replace(resume=str(run_dir)), train_set=tr, val_set=va)  # space is back
    assert out["epoch"] == 1 and load(run_dir / "last.pt")["global_step"] == 8
    assert not list(run_dir.glob("*.tmp"))


def test_disk_full_detected_through_the_exception_chain_and_by_free_space(tmp_path):
    try:
        with open(tmp_path / "x", "wb") as f:
            torch.save({"w": torch.zeros(10_000)}, _FullDisk(f, 100))
    except RuntimeError as e:
        chained = e
    assert "unexpected pos" in str(chained) and ckpt_io._disk_full(chained)
    err = ckpt_io.save_error(tmp_path / "last.pt", RuntimeError("write failed"), need=10**18)
    assert "(disk full)" in str(err) and "then start the run again" in str(err)


# ----------------------------------------------------------------------------- 3. broken checkpoints

def _broken(kind: str, path: Path, good: Path) -> Path:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(b"\x00" + torch.randint(0, 256, (4095,), generator=torch.Generator().manual_seed(0),
                                                   dtype=torch.uint8).numpy().tobytes())
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    elif kind == "object-pickle":
        import argparse
        torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {}}, path)
    return path


BROKEN = ("empty", "random", "truncated", "object-pickle")


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_checkpoint_is_one_line_naming_the_file(tmp_path, kind, trained_run):
    bad = _broken(kind, tmp_path / "bad.pt", trained_run[0] / "last.pt")
    with pytest.raises(BadCheckpoint) as e:
        ckpt_io.load(bad)
    msg = str(e.value)
    assert str(bad) in msg and "use another checkpoint" in msg and "\n" not in msg
    want = {"empty": "empty (0 bytes)", "random": "not a PyTorch checkpoint", "truncated": "truncated",
            "object-pickle": "pickled Python objects, which are never loaded"}[kind]
    assert want in msg
    from ghostnetv3.deploy.load import load_for_deploy  # export, quantize, bench
    with pytest.raises(BadCheckpoint, match=str(bad)):
        load_for_deploy(bad, model="test_efficientnet")


@pytest.mark.parametrize("command", ["eval", "resume", "export"])
def test_broken_checkpoint_in_each_command_is_one_line(tmp_path, command, trained_run, capsys):
    run_dir = _copy_run(trained_run[0], tmp_path / "run")
    for name in ("last.pt", "best.pt"):
        _broken("truncated", run_dir / name, trained_run[0] / name)
    argv = {"eval": ["eval", str(run_dir)], "resume": ["train", "--resume", str(run_dir)],
            "export": ["export", str(run_dir), "-o", str(tmp_path / "m.onnx")]}[command]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: cannot read checkpoint" in err[-1] and "truncated" in err[-1], err
    assert not (tmp_path / "m.onnx").exists()


def test_eval_falls_back_to_an_intact_last_pt_and_says_so(tmp_path, trained_run, capsys):
    from ghostnetv3.engine.evaluate import evaluate_checkpoint
    run_dir = _copy_run(trained_run[0], tmp_path / "run")
    _broken("empty", run_dir / "best.pt", trained_run[0] / "best.pt")
    r = evaluate_checkpoint(run_dir, val_set=trained_run[1][1])
    assert r["checkpoint"] == str(run_dir / "last.pt") and r["n"] == 128
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {run_dir / 'best.pt'}" in err and f"using {run_dir / 'last.pt'} instead" in err


# ----------------------------------------------------------------------------- 5. unwritable output

def test_unwritable_output_at_start_is_one_line(tmp_path, trained_run):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = tiny_config(blocker, epochs=1)  # --output under a file: mkdir fails like a read-only disk
    with pytest.raises(SaveError, match=r"cannot write the run directory .*pick a writable --output"):
        train(cfg, train_set=trained_run[1][0], val_set=trained_run[1][1])


def test_unwritable_output_mid_run_gives_the_resume_hint(tmp_path, monkeypatch, trained_run):
    cfg = tiny_config(tmp_path, epochs=1, checkpoint_interval=2, model_ema=False)
    _fail_nth_save(monkeypatch, 2, PermissionError(errno.EACCES, "Permission denied"))
    with pytest.raises(SaveError) as e:
        train(cfg, train_set=trained_run[1][0], val_set=trained_run[1][1])
    run_dir = tmp_path / "run"
    assert f"(Permission denied); the previous last.pt is intact; make {run_dir} writable" in str(e.value)
    assert f"then continue with: ghostnetv3 train --resume {run_dir}" in str(e.value)
    with pytest.raises(SaveError, match=r"could not write .*metrics.jsonl \(No such file"):
        ckpt_io.append_line(tmp_path / "gone" / "metrics.jsonl", "{}")


# ----------------------------------------------------------------------------- 6. recipes, 7. config.yaml

def test_yaml_syntax_error_names_file_and_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("lr: 0.1\nepochs: [1\nbatch_size: 3\n")
    with pytest.raises(ValueError, match=rf"^{recipe}:3:\d+: YAML syntax error"):
        load_config(recipe)


def test_edited_config_yaml_is_reported_and_the_checkpoint_wins(tmp_path, trained_run, capsys):
    from ghostnetv3.deploy.load import load_for_deploy
    from ghostnetv3.engine.evaluate import evaluate_checkpoint
    run_dir = _copy_run(trained_run[0], tmp_path / "run")
    cfg_file = run_dir / "config.yaml"
    edited = yaml.safe_load(cfg_file.read_text())
    edited.update(img_size=64, lr=0.5)
    cfg_file.write_text(yaml.safe_dump(edited))
    _, dcfg = load_for_deploy(run_dir)  # export/quantize/bench
    assert dcfg["img_size"] == 16 and dcfg["lr"] == 0.05
    evaluate_checkpoint(run_dir, val_set=trained_run[1][1])
    err = capsys.readouterr().err
    assert err.count(f"{cfg_file} differs from the config inside") == 2, err
    assert "img_size: 16 in the checkpoint, 64 in config.yaml" in err and "lr: 0.05" in err
    # --resume: reported, the checkpoint's config used, config.yaml rewritten from it
    train(tiny_config(tmp_path, epochs=1, resume=str(run_dir)), train_set=trained_run[1][0],
          val_set=trained_run[1][1])
    assert f"{cfg_file} differs from the config inside" in capsys.readouterr().err
    assert yaml.safe_load(cfg_file.read_text())["img_size"] == 16


# ----------------------------------------------------------------------------- 8-10. wrong inputs

def test_restart_after_a_kill_before_the_first_checkpoint_starts_clean(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"type": "step", "epoch": 1, "step": 6, "loss": 9.9}) + "\n")
    (run_dir / ".last.pt.tmp4242").write_bytes(b"x" * 100)
    train(tiny_config(tmp_path, epochs=1, model_ema=False), train_set=trained_run[1][0], val_set=trained_run[1][1])
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["type"] == "step"]
    assert all(r.get("loss") != 9.9 for r in recs) and steps[0]["step"] == 2
    assert not (run_dir / ".last.pt.tmp4242").exists()
    (run_dir / ".best.pt.tmp999").write_bytes(b"x")  # a stale temp file is also cleaned on resume
    train(tiny_config(tmp_path, epochs=2, model_ema=False, resume=str(run_dir)),
          train_set=trained_run[1][0], val_set=trained_run[1][1])
    assert not (run_dir / ".best.pt.tmp999").exists()


def test_one_class_data_is_refused(tmp_path, trained_run):
    tr, va = trained_run[1]
    one = tr.subset((tr.labels == 0).nonzero().flatten())
    one.classes = ["only"]
    one.labels = torch.zeros_like(one.labels)
    with pytest.raises(ValueError, match="has one class \\(only\\)"):
        train(tiny_config(tmp_path, epochs=1), train_set=one, val_set=va)


def test_eval_checks_class_names_not_only_the_count(trained_run):
    from ghostnetv3.engine.evaluate import evaluate_checkpoint
    va = trained_run[1][1]
    renamed = va.subset(torch.arange(len(va)))
    renamed.classes = list(va.classes[1:]) + ["zz"]
    with pytest.raises(ValueError, match="are not the ones .* was trained on \\(label 0: 'T-shirt/top' vs 'Trouser'"):
        evaluate_checkpoint(trained_run[0], val_set=renamed)


def test_fractional_epochs_refused_on_the_cli_as_in_yaml(capsys):
    with pytest.raises(ValueError, match="epochs: cannot read"):
        coerce("epochs", "1.5")
    assert coerce("epochs", "3") == 3 and coerce("epochs", "3.0") == 3
    assert cli.main(["train", "--epochs", "1.5", "--model", "test_efficientnet"]) == 1
    assert "epochs: cannot read" in capsys.readouterr().err


# ----------------------------------------------------------------------------- cli.main's rule, item 12

def _main_with(monkeypatch, exc: BaseException) -> int:
    import ghostnetv3.engine.cli as engine_cli

    def boom(args):
        raise exc

    monkeypatch.setattr(engine_cli, "_cmd_plot", boom)
    return cli.main(["plot", "somewhere"])


def test_cli_shortens_our_errors_and_keeps_tracebacks_of_bugs(monkeypatch, capsys):
    assert _main_with(monkeypatch, UserError("the disk is full; free space")) == 1
    assert capsys.readouterr().err == "ghostnetv3 plot: error: the disk is full; free space\n"
    with pytest.raises(RuntimeError, match="a bug"):  # torch's or ours: unexpected, so not hidden
        _main_with(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(KeyError):
        _main_with(monkeypatch, KeyError("state_dict"))
    assert _main_with(monkeypatch, KeyboardInterrupt()) == 130  # a second SIGTERM/Ctrl-C: no traceback
    assert "interrupted" in capsys.readouterr().err


def test_safeload_first_intact_raises_the_first_error_when_none_reads(tmp_path):
    a, b = tmp_path / "best.pt", tmp_path / "last.pt"
    a.write_bytes(b"")
    b.write_bytes(b"garbage!")
    with pytest.raises(BadCheckpoint, match="best.pt: it is empty"):
        safeload.first_intact([a, b])


def test_unknown_model_hint_lists_each_name_once():
    from ghostnetv3 import create_model
    with pytest.raises(ValueError) as e:
        create_model("ghostnetv3_100x")
    near = str(e.value).split("did you mean ")[1].split("?")[0].split(", ")
    assert len(near) == len(set(near)) and "ghostnetv3_100" in near


def test_deploy_num_classes_mismatch_does_not_suggest_a_flag_export_lacks(trained_run):
    from ghostnetv3.deploy.load import load_for_deploy
    with pytest.raises(ValueError, match=r"holds a 10-class head; --num-classes 5 does not fit it: drop "
                                         r"--num-classes") as e:
        load_for_deploy(trained_run[0], num_classes=5)
    assert "train --init-checkpoint" in str(e.value)
