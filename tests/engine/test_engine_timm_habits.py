"""timm's training habits (issue 25, item 16): --grad-accum-steps (the same effective batch, exact resume),
--lr-base/--lr-base-size, --eval-metric, TensorBoard and W&B logging (one line when not installed)."""
import json
import sys
import types

import pytest
import torch
import torch.nn as nn

from engine_helpers import assert_same_state, cli_args, load, popen_cli, run_cli, tiny_config
from ghostnetv3.engine.config import TrainConfig, load_config
from ghostnetv3.engine.loop import forward_backward, micro_bounds
from ghostnetv3.engine.model_factory import build_model
from ghostnetv3.engine.train import train
from test_engine_resume import assert_equal_runs, wait_for


# ------------------------------------------------------------------------------ gradient accumulation

def test_micro_batches_split_like_tensor_split():
    assert micro_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert micro_bounds(2, 4) == [(0, 1), (1, 2)]          # a short last batch: no empty micro-batch
    assert micro_bounds(8, 1) == [(0, 8)]


def _grads(accum, batch, model, scaler):
    from ghostnetv3.data.loader import Batch
    model.zero_grad(set_to_none=True)

    def loss_fn(x, y, part):  # a KD-like part: the micro-batch's size, summed with its share
        return nn.functional.cross_entropy(model(x), y), {"kd": torch.tensor(float(len(y)))}
    loss, parts = forward_backward(model, Batch(*batch), loss_fn, accum=accum, scaler=scaler)
    return loss, parts, [p.grad.clone() for p in model.parameters()]


def test_accumulated_gradients_equal_the_whole_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x, y = torch.randn(10, 3, 2, 2), torch.randint(0, 5, (10,))
    batch = (x, y, torch.arange(10), torch.zeros(10, dtype=torch.int64))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss1, parts1, g1 = _grads(1, batch, model, scaler)
    loss3, parts3, g3 = _grads(3, batch, model, scaler)    # micro-batches of 4, 3, 3
    torch.testing.assert_close(loss3, loss1, rtol=0, atol=1e-6)
    for a, b in zip(g1, g3):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert parts1 == {"kd": 10.0} and parts3["kd"] == pytest.approx(4 * 0.4 + 3 * 0.3 + 3 * 0.3)


def test_grad_accum_run_matches_the_whole_batch_run(tmp_path, tiny_sets):
    """A BN-free model (GroupNorm): 2 micro-batches per step train to the same weights as whole batches."""
    kw = dict(model="test_efficientnet_gn", drop_rate=0.0, epochs=1)
    cfg = tiny_config(tmp_path / "a", **kw)
    whole = train(cfg, train_set=tiny_sets[0], val_set=tiny_sets[1])
    accum = train(tiny_config(tmp_path / "b", grad_accum_steps=2, **kw), train_set=tiny_sets[0], val_set=tiny_sets[1])
    assert whole["global_step"] == accum["global_step"] == 8       # one optimizer step per batch either way
    a, b = load(tmp_path / "a" / "run" / "last.pt"), load(tmp_path / "b" / "run" / "last.pt")
    torch.manual_seed(cfg.seed)
    init = build_model(cfg, 10, 1).state_dict()                    # the weights both runs started from
    # gradients agree to float rounding (test above), which 8 SGD steps amplify (6e-5 measured); a wrong
    # effective batch (an unscaled micro-batch loss: twice the step) differs by as much as the weights moved
    moved = max((a["state_dict"][k] - init[k]).abs().max().item() for k in init if init[k].is_floating_point())
    diff = max((a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in init)
    assert moved > 1e-2 and diff < 0.01 * moved, (diff, moved)


def test_grad_accum_under_ddp_matches_one_process(tmp_path):
    """torchrun 2x1 with 2 micro-batches per rank (gradients synced on the last only) trains the steps of one
    process with whole batches (GroupNorm model: up to float summation order, as tests/engine/test_engine_ddp.py)."""
    import subprocess
    from engine_helpers import env
    kw = dict(model="test_efficientnet_gn", drop_rate=0.0, epochs=1)
    one = run_cli(["train", *cli_args(tmp_path, experiment="one", **kw)])
    assert one.returncode == 0, one.stderr[-2000:]
    args = cli_args(tmp_path, experiment="two", grad_accum_steps=2, **kw)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "ghostnetv3.cli", "train", *args], env=env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "batch 32 as 2 micro-batches of ~8" in two.stdout
    a, b = load(tmp_path / "one" / "last.pt"), load(tmp_path / "two" / "last.pt")
    assert a["global_step"] == b["global_step"] == 8
    assert_same_state(a["state_dict"], b["state_dict"], atol=1e-3)


def test_grad_accum_larger_than_the_batch_is_one_line(tmp_path):
    r = run_cli(["train", *cli_args(tmp_path, batch_size=4, grad_accum_steps=8, epochs=1)])
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "ghostnetv3 train: error: --grad-accum-steps 8 splits each batch of 4 images (per process) into "
        "micro-batches; give at most 4, or a larger --batch-size"]


def test_grad_accum_resume_is_exact(tmp_path):
    """The same as tests/engine/test_engine_resume.py, with 2 micro-batches per step: SIGKILL after the first
    mid-epoch checkpoint, --resume, bitwise the uninterrupted run."""
    args = dict(grad_accum_steps=2, checkpoint_interval=3)
    r = run_cli(["train", *cli_args(tmp_path / "ref", **args)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "batch 32 as 2 micro-batches of ~16" in r.stdout
    ref = load(tmp_path / "ref" / "run" / "last.pt")
    proc = popen_cli(["train", *cli_args(tmp_path, **args)])
    ckpt = tmp_path / "run" / "last.pt"
    wait_for(ckpt, proc)
    proc.kill()
    proc.communicate()
    assert 0 < load(ckpt)["global_step"] < ref["global_step"]
    r = run_cli(["train", "--resume", str(tmp_path / "run")])
    assert r.returncode == 0, r.stderr[-2000:]
    assert_equal_runs(load(ckpt), ref)


# ------------------------------------------------------------------------------------ lr from a base

def test_lr_base_scales_with_the_global_batch(tmp_path, tiny_sets):
    cfg = tiny_config(tmp_path, lr=None, lr_base=0.1, lr_base_size=256, epochs=1)
    assert cfg.lr is None                                          # to be set from the run's batch
    train(cfg, train_set=tiny_sets[0], val_set=tiny_sets[1])
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["lr"] == pytest.approx(0.1 * 32 / 256) and plan["batch_size"] == 32
    state = load(tmp_path / "run" / "last.pt")
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.0125)
    assert load_config(None, lr=0.2, lr_base=0.1).lr == 0.2        # a given lr wins (timm)
    assert TrainConfig().lr == 0.05                                 # neither: the default


def test_lr_base_is_printed_on_the_plan_line(tmp_path):
    r = run_cli(["train", *cli_args(tmp_path, epochs=1, lr="none", lr_base=0.1)])
    assert r.returncode == 0, r.stderr[-2000:]
    plan = next(line for line in r.stdout.splitlines() if line.startswith("plan: "))
    assert plan.endswith("; lr 0.0125 (--lr-base 0.1 x batch 32 / 256)")


# ------------------------------------------------------------------------------------ best.pt's metric

def test_eval_metric_loss_picks_the_lowest_validation_loss(tmp_path, tiny_sets, capsys):
    summary = train(tiny_config(tmp_path, eval_metric="loss", epochs=2), train_set=tiny_sets[0], val_set=tiny_sets[1])
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"type": "epoch"' in line]
    scores = {(e["epoch"], src): e[f"{src}_loss"] for e in epochs for src in ("val", "ema")}
    (best_epoch, best_src), best = min(scores.items(), key=lambda kv: kv[1])
    assert summary["best_loss"] == best and summary["best_epoch"] == best_epoch
    assert summary["best_source"] == {"val": "raw", "ema": "ema"}[best_src] and summary["eval_metric"] == "loss"
    assert load(tmp_path / "run" / "best.pt")["epoch"] == best_epoch
    assert "val loss" in capsys.readouterr().out                  # the epoch line names what it scores


def test_eval_metric_is_checked():
    with pytest.raises(ValueError, match="eval_metric: 'acc' is not one of top1, top5, loss"):
        TrainConfig(eval_metric="acc")


# ------------------------------------------------------------------------------------ TensorBoard / W&B

def _hide(tmp_path, package: str):
    """A PYTHONPATH entry where `import package` fails as when it is not installed (whatever is installed)."""
    d = tmp_path / "hide" / package
    d.mkdir(parents=True)
    (d / "__init__.py").write_text(f"raise ImportError(\"No module named '{package}'\")\n")
    return str(tmp_path / "hide")


@pytest.mark.parametrize("flag,package", [("--log-tensorboard", "tensorboard"), ("--log-wandb", "wandb")])
def test_logger_without_its_package_is_one_line(tmp_path, flag, package):
    from engine_helpers import env
    import subprocess
    e = env()
    e["PYTHONPATH"] = _hide(tmp_path, package) + ":" + e["PYTHONPATH"]
    r = subprocess.run([sys.executable, "-m", "ghostnetv3.cli", "train", *cli_args(tmp_path, epochs=1), flag],
                       env=e, capture_output=True, text=True, timeout=240)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"ghostnetv3 train: error: {flag} needs the {package} package, which is not installed: pip install {package} "
        f"(or drop {flag})"]
    assert not (tmp_path / "run").exists()                        # refused before any work


class _Recorder:
    def __init__(self):
        self.calls = []


def test_tensorboard_gets_the_logged_numbers(tmp_path, tiny_sets, monkeypatch):
    rec = _Recorder()

    class SummaryWriter:
        def __init__(self, log_dir):
            rec.calls.append(("open", log_dir))

        def add_scalar(self, tag, value, step):
            rec.calls.append((tag, value, step))

        def close(self):
            rec.calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    train(tiny_config(tmp_path, epochs=1, log_tensorboard=True), train_set=tiny_sets[0], val_set=tiny_sets[1])
    assert rec.calls[0] == ("open", str(tmp_path / "run" / "tb")) and rec.calls[-1] == ("close",)
    tags = {c[0]: c for c in rec.calls[1:-1]}
    assert tags["epoch/val_top1"][2] == 8 and "step/loss" in tags and "epoch/ema_top1" in tags
    assert "epoch/best_source" not in tags                         # numbers only


def test_wandb_gets_the_logged_numbers_and_one_run_per_run_dir(tmp_path, tiny_sets, monkeypatch):
    rec = _Recorder()

    class Run:
        def log(self, data, step):
            rec.calls.append(("log", data, step))

        def finish(self):
            rec.calls.append(("finish",))

    def init(**kw):
        rec.calls.append(("init", kw))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    train(tiny_config(tmp_path, epochs=1, log_wandb=True), train_set=tiny_sets[0], val_set=tiny_sets[1])
    kind, kw = rec.calls[0]
    assert kind == "init" and kw["name"] == "run" and kw["resume"] == "allow" and kw["config"]["log_wandb"] is True
    assert (tmp_path / "run" / "wandb_id.txt").read_text().strip() == kw["id"]
    logged = [c for c in rec.calls if c[0] == "log"]
    assert logged[-1][2] == 8 and "epoch/val_top1" in logged[-1][1] and rec.calls[-1] == ("finish",)
    # --resume logs into the same W&B run
    train(tiny_config(tmp_path, epochs=2, log_wandb=True, resume=str(tmp_path / "run")),
          train_set=tiny_sets[0], val_set=tiny_sets[1])
    assert [c[1]["id"] for c in rec.calls if c[0] == "init"] == [kw["id"], kw["id"]]
