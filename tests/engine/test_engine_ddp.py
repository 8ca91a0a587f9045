"""2 CPU processes under torchrun vs 1 process at the same global batch.

The model is timm's `test_efficientnet_gn` (GroupNorm, no dropout): nothing couples the samples of
a batch, so DDP (each rank takes half of every global batch, gradients averaged) computes the
same steps as one process, up to float summation order. Over 16 SGD steps that order noise grows
to ~2e-4 in the weights; we allow 1e-3. With BatchNorm the two are different algorithms (each
rank normalises over its own 16 images; running stats are rank 0's), so weights are not compared
there — `--sync-bn` exists for CUDA, torch's SyncBatchNorm is GPU-only.
"""
import json
import subprocess
import sys

from engine_helpers import assert_same_state, cli_args, env, load, run_cli

DDP = dict(model="test_efficientnet_gn", drop_rate=0.0, epochs=2)


def last_epoch(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"type": "epoch"' in line][-1]


def test_two_processes_match_one(tmp_path):
    one = run_cli(["train", *cli_args(tmp_path, experiment="one", **DDP)])
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "ghostnetv3.cli", "train", *cli_args(tmp_path, experiment="two", **DDP)],
                         env=env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert len([line for line in two.stdout.splitlines() if line.startswith("{")]) == 1, "only rank 0 reports"

    a, b = load(tmp_path / "one" / "last.pt"), load(tmp_path / "two" / "last.pt")
    assert not any(k.startswith("module.") for k in b["state_dict"]), "DDP prefix leaked into the checkpoint"
    assert len(b["rng"]) == 2  # every rank's random state, for an exact DDP resume
    assert b["global_step"] == a["global_step"] == 16
    assert_same_state(a["state_dict"], b["state_dict"], atol=1e-3)
    assert_same_state(a["state_dict_ema"], b["state_dict_ema"], atol=1e-3)

    ma, mb = last_epoch(tmp_path / "one"), last_epoch(tmp_path / "two")
    assert abs(ma["train_loss"] - mb["train_loss"]) < 1e-3  # logged loss is the mean over ranks
    assert abs(ma["val_loss"] - mb["val_loss"]) < 1e-3 and abs(ma["ema_loss"] - mb["ema_loss"]) < 1e-3
    assert abs(ma["val_top1"] - mb["val_top1"]) <= 100 / 128 + 1e-9  # at most one of 128 images flips
    assert not (tmp_path / "two" / "metrics.jsonl.tmp").exists()


def test_global_batch_must_divide_over_ranks(tmp_path):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "ghostnetv3.cli", "train", *cli_args(tmp_path, batch_size=33, epochs=1)],
                       env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "--batch-size 33 is the global batch and must divide evenly over 2 processes" in r.stderr
