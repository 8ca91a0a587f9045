"""Two `ghostnetv3 ablate` processes on one plan share its runs (each run is claimed by one), and a
failed run is reported with the line that says why, not a progress bar (issue 25, item 9)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import ghostnetv3
from ghostnetv3.ablate import load_plan
from ghostnetv3.ablate import runner as runner_mod
from ghostnetv3.ablate.runner import RunFailed, error_line

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(ghostnetv3.__file__).resolve().parents[1]  # subprocesses import the tree under test
RECIPE = str(ROOT / "recipes" / "fashion_mnist.yaml")
TINY = {"train_subset": 64, "val_subset": 32, "epochs": 1, "batch_size": 32, "img_size": 32, "width": 0.1,
        "warmup_epochs": 0, "log_interval": 0, "model_ema": False, "channels_last": False}


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _plan(tmp_path: Path, seeds: int = 1) -> Path:
    plan = {"name": "shared", "recipe": RECIPE, "common": dict(TINY), "seeds": seeds,
            "output": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
            "arms": [{"name": "plain", "set": {"num_conv_branches": 1, "scale_branch": False,
                                               "identity_branch": False}},
                     {"name": "rep2", "ref": "plain", "set": {"num_conv_branches": 2}}]}
    p = tmp_path / "plan.yaml"
    p.write_text(yaml.safe_dump(plan))
    return p


def test_two_ablate_processes_on_one_plan_share_its_runs(tmp_path):
    """Both started at once on a 2-run plan: both exit 0, every run is trained exactly once (one
    `train` per run log), and the report holds both runs."""
    plan = _plan(tmp_path)
    cmd = [sys.executable, "-m", "ghostnetv3.cli", "ablate", "-c", str(plan), "--threads", "1"]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
        assert "failed" not in out + err
    both = "".join(out for out, _ in outs)
    for run in ("plain-s0", "rep2-s0"):
        assert both.count(f"[ablate] {run}: training") == 1, both
        log = (tmp_path / "runs" / "shared" / "_logs" / f"{run}.log").read_text()
        assert log.count("$ ghostnetv3 train") == 1, log
    summary = json.loads((tmp_path / "results" / "ablation_shared.json").read_text())
    assert summary["finished_runs"] == 2


def _hold(path: Path) -> subprocess.Popen:
    """Another live process holding `path`'s lock, as a second `ablate` would."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from ghostnetv3.ablate.lock import try_claim
        claim = try_claim(Path({str(path)!r}))
        print("held" if claim else "busy", flush=True)
        time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _fake_training(monkeypatch, trained: list[str]) -> None:
    def fake_call(self, args, log_path, what):
        trained.append(what)
        (self.root / what).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(runner_mod.Runner, "_call", fake_call)
    monkeypatch.setattr(runner_mod, "score_run", lambda run_dir: {"top1": 50.0, "macro_f1": 50.0,
                                                                  "balanced_acc": 50.0, "global_step": 2})


def test_a_run_claimed_by_another_live_process_is_skipped_and_named(tmp_path, monkeypatch, capsys):
    from ghostnetv3.cli import main

    trained: list[str] = []
    _fake_training(monkeypatch, trained)
    plan_path = _plan(tmp_path)
    runner = runner_mod.Runner(load_plan(plan_path), log=lambda *a: None)
    holder = _hold(runner.lock_path("plain-s0"))
    try:
        assert main(["ablate", "-c", str(plan_path)]) == 0
        out = capsys.readouterr().out
        assert f"[ablate] plain-s0: being trained by process {holder.pid} on this plan; left to it" in out
        assert "1 run(s) left to another live process on this plan: plain-s0" in out
        assert trained == ["rep2-s0"]
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed): its claim went with it, and the run is trained now
    assert main(["ablate", "-c", str(plan_path)]) == 0
    assert trained == ["rep2-s0", "plain-s0"]
    assert "left to another" not in capsys.readouterr().out


TQDM = "epoch 1/1:  45%|####5     | 70/156 [00:10<00:12,  6.8it/s, loss=1.23]"


@pytest.mark.parametrize("script, expected", [
    (f"import sys; sys.stderr.write('{TQDM}\\r'); print('ghostnetv3 train: error: data not found: /x; pass "
     f"--data'); sys.stderr.write('\\r{TQDM}\\r   \\r'); sys.exit(1)",
     "ghostnetv3 train: error: data not found: /x; pass --data"),
    (f"import sys; sys.stderr.write('{TQDM}\\r'); raise RuntimeError('CUDA error: device-side assert')",
     "RuntimeError: CUDA error: device-side assert"),
    (f"import os, signal, sys; sys.stderr.write('{TQDM}\\r'); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGKILL)",
     "killed by SIGKILL"),
])
def test_a_failed_run_names_its_error_line_not_a_progress_bar(tmp_path, monkeypatch, script, expected):
    monkeypatch.setattr(runner_mod, "CLI", [sys.executable, "-c", script])
    runner = runner_mod.Runner(load_plan(_plan(tmp_path)), log=lambda *a: None)
    log = tmp_path / "x.log"
    log.write_text("ghostnetv3 train: error: an earlier attempt's reason\n")  # not this attempt's
    with pytest.raises(RunFailed) as e:
        runner._call(["train"], log, "plain-s0")
    msg = str(e.value)
    assert msg.startswith("plain-s0 failed (exit ") and expected in msg and f"full log: {log}" in msg
    assert "%|" not in msg and "earlier attempt" not in msg


def test_error_line_prefers_the_error_over_later_noise():
    out = ("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad value\n"
           f"{TQDM}\r\r   \r")
    assert error_line(out, 1) == "ValueError: bad value"
    assert error_line(f"{TQDM}\r", 1) == "no output"
    assert error_line("warming up\nstill warming\n", 1) == "still warming"
