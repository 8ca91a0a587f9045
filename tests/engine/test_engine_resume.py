"""Resume is exact: a run killed (SIGKILL) or stopped (SIGTERM) and resumed ends bitwise equal
to a run that was never interrupted — model, EMA and optimizer state."""
import signal
import time

import pytest

from engine_helpers import assert_same_state, cli_args, load, popen_cli, run_cli, tiny_config
from ghostnetv3.engine.train import train

STEPS = 24  # 3 epochs x 8 steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    r = run_cli(["train", *cli_args(out, checkpoint_interval=3)])
    assert r.returncode == 0, r.stderr[-2000:]
    final = load(out / "run" / "last.pt")
    assert final["global_step"] == STEPS and final["epoch"] == 3
    return final, (out / "run" / "metrics.jsonl").read_text()


def wait_for(path, proc, timeout=180):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.communicate()[1][-2000:]}"
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.02)


def assert_equal_runs(a, b):
    assert_same_state(a["state_dict"], b["state_dict"])
    assert_same_state(a["state_dict_ema"], b["state_dict_ema"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert_same_state(sa, sb)
    assert (a["epoch"], a["step"], a["global_step"]) == (b["epoch"], b["step"], b["global_step"])


def test_sigkill_then_resume_is_exact(tmp_path, uninterrupted):
    ref, ref_metrics = uninterrupted
    proc = popen_cli(["train", *cli_args(tmp_path, checkpoint_interval=3)])
    ckpt = tmp_path / "run" / "last.pt"
    wait_for(ckpt, proc)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate()
    killed_at = load(ckpt)["global_step"]
    assert 0 < killed_at < STEPS

    r = run_cli(["train", "--resume", str(tmp_path / "run")])  # the run's own config
    assert r.returncode == 0, r.stderr[-2000:]
    assert_equal_runs(load(ckpt), ref)
    # the log is rewritten from the checkpoint on: the same epoch lines as the unbroken run
    epochs = lambda text: [l for l in text.splitlines() if '"type": "epoch"' in l]  # noqa: E731
    strip = lambda lines: [l.split('"elapsed_s"')[0].split('"train_img_s"')[0] for l in lines]  # noqa: E731
    assert strip(epochs((tmp_path / "run" / "metrics.jsonl").read_text())) == strip(epochs(ref_metrics))


def test_sigterm_saves_current_step_and_resume_is_exact(tmp_path, uninterrupted):
    ref, _ = uninterrupted
    args = cli_args(tmp_path, checkpoint_interval=3)
    proc = popen_cli(["train", *args])
    ckpt = tmp_path / "run" / "last.pt"
    wait_for(ckpt, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM at epoch" in err and "--resume" in err
    saved = load(ckpt)
    assert 0 < saved["global_step"] < STEPS
    # saved at the step it stopped at, and says so
    assert f"at epoch {saved['epoch'] + 1} step {saved['step']};" in err

    r = run_cli(["train", *args, "--resume", str(tmp_path / "run")])  # same command + --resume
    assert r.returncode == 0, r.stderr[-2000:]
    assert_equal_runs(load(ckpt), ref)


def test_resume_refuses_another_model(tmp_path, tiny_sets):
    train(tiny_config(tmp_path, epochs=1), train_set=tiny_sets[0].subset(range(32)), val_set=tiny_sets[1])
    r = run_cli(["train", "--resume", str(tmp_path / "run"), "--model", "test_resnet"])
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"ghostnetv3 train: error: {tmp_path / 'run' / 'last.pt'} was saved from model 'test_efficientnet', "
        f"not 'test_resnet'; resume with --model test_efficientnet or start a new run"]


def test_resume_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli(["train", "--resume", str(tmp_path / "empty")])
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no checkpoint in" in lines[0] and "without --resume" in lines[0]


def test_new_run_into_an_existing_run_dir_is_refused(tmp_path):
    from ghostnetv3.engine.train import make_run_dir

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"already holds a run; continue it with --resume"):
        make_run_dir(tiny_config(tmp_path))
