"""The units `engine.train.train` is made of (issue 24): the classification task's loss, the
`TrainState` that saves and resumes, `train_one_epoch`, and the rule that distillation lives above the
engine."""
import ast
import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from engine_helpers import load, tiny_config
from ghostnetv3.data import Batch
from ghostnetv3.engine import checkpoint as ckpt_io
from ghostnetv3.engine.plan import make_plan
from ghostnetv3.engine.config import TrainConfig
from ghostnetv3.engine.distributed import Dist
from ghostnetv3.engine.loop import Trainer, make_step_loss, train_one_epoch
from ghostnetv3.engine.metrics_log import MetricsLog
from ghostnetv3.engine.signals import StopFlag
from ghostnetv3.engine.state import FORMAT, RunInfo, TrainState, restore_training, save_training_checkpoint
from ghostnetv3.engine.task import ClassificationTask
from ghostnetv3.engine.train import train
from ghostnetv3.errors import UserError

ENGINE = Path(__file__).resolve().parents[2] / "src" / "ghostnetv3" / "engine"


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def _batch(seed: int, n: int = 4) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g),
                 torch.arange(n), torch.zeros(n, dtype=torch.int64))


# ------------------------------------------------------------------------------ ClassificationTask

def test_classification_loss_is_plain_cross_entropy():
    task = ClassificationTask()
    task.criterion = nn.CrossEntropyLoss()  # what setup() picks without smoothing or Mixup
    model, batch = _tiny_model(), _batch(1)
    loss, parts = task.loss(model, batch)
    assert parts == {}
    torch.testing.assert_close(loss, nn.functional.cross_entropy(model(batch.images), batch.labels), rtol=0, atol=0)


def test_classification_setup_picks_the_criterion_the_config_asks_for(tmp_path):
    task = ClassificationTask()
    task.setup(TrainConfig(img_size=8, smoothing=0.0, mixup=0.0, cutmix=0.0), None, 1, 3, torch.device("cpu"))
    assert task.mixup_fn is None and isinstance(task.criterion, nn.CrossEntropyLoss)
    task.setup(TrainConfig(img_size=8, mixup=0.8), None, 1, 3, torch.device("cpu"))
    assert task.mixup_fn is not None and type(task.criterion).__name__ == "SoftTargetCrossEntropy"


def test_engine_refuses_a_distillation_config_in_one_line_naming_the_entry_point(tmp_path):
    with pytest.raises(UserError) as e:
        train(tiny_config(tmp_path, teacher="resnet18"))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "ghostnetv3.distill.train(cfg)" in msg
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_engine_does_not_import_distillation():
    """Distillation is a task above the engine: no engine module imports ghostnetv3.distill, at the top
    or inside a function (the CLI module, which composes the two, aside)."""
    found = []
    for path in sorted(ENGINE.glob("*.py")):
        if path.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found += [f"{path.name}:{node.lineno} {n}" for n in names
                      if n.startswith("ghostnetv3.distill") or n.startswith("..distill")]
    assert found == []


# ------------------------------------------------------------------------------ TrainState

def test_train_state_round_trip_restores_counters_best_and_rng(tmp_path):
    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 2, 2)).sum().backward()
    opt.step()                                           # momentum buffers to save
    cfg = TrainConfig(epochs=2, model_ema=False)
    plan = make_plan(cfg, steps_per_epoch=5, channels_last=False)
    state = TrainState("top1", epoch=1, step=3, global_step=8, loss_sum=2.5, loss_count=3, parts_sum={"kd": 0.7})
    state.consider({"raw": 41.0, "ema": 43.5}, epoch=1)
    info = RunInfo("tiny", 3, 1, ["a", "b", "c"], cfg.to_dict())
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(6)
    path = tmp_path / "last.pt"
    save_training_checkpoint(path, state, info, Dist(), module=model, ema=None, optimizer=opt,
                             scheduler=torch.optim.lr_scheduler.StepLR(opt, 1), scaler=scaler, plan=plan)
    expected = (torch.rand(4), np.random.rand(3), random.random())

    torch.manual_seed(999)                               # another process: other streams
    np.random.seed(999)
    random.seed(999)
    ckpt = load(path)
    assert ckpt["format"] == FORMAT and ckpt["classes"] == ["a", "b", "c"] and ckpt["plan"] == plan.to_dict()
    back = TrainState.from_checkpoint(ckpt, "top1")
    assert (back.epoch, back.step, back.global_step) == (1, 3, 8)
    assert (back.loss_sum, back.loss_count, back.parts_sum) == (2.5, 3, {"kd": 0.7})
    assert back.best == {"value": 43.5, "epoch": 1, "source": "ema"} and back.elapsed >= 0
    back.restore_rng(Dist())
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]

    fresh = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    restore_training(ckpt, path, "tiny", model=fresh, optimizer=fresh_opt, scaler=scaler, ema=None,
                     make_ema=lambda m: None)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"],
                       opt.state_dict()["state"][0]["momentum_buffer"])


def test_train_state_resumed_with_another_metric_starts_the_best_afresh(capsys):
    state = TrainState("top1")
    state.consider({"raw": 50.0}, epoch=2)
    ckpt = {**state.counters(), "rng": []}
    back = TrainState.from_checkpoint(ckpt, "loss")
    assert back.best == {"value": float("inf"), "epoch": 0, "source": None}
    assert "picked best.pt by another metric" in capsys.readouterr().out


def test_a_lower_loss_is_the_better_one():
    state = TrainState("loss")
    state.consider({"raw": 0.9, "ema": 0.7}, epoch=1)
    state.consider({"raw": 0.8}, epoch=2)                # worse than 0.7: kept
    assert state.best == {"value": 0.7, "epoch": 1, "source": "ema"}


# ------------------------------------------------------------------------------ train_one_epoch

class _Constant:
    """A scheduler that keeps the lr (the test replays the steps by hand)."""

    def step_update(self, num_updates):
        pass

    def state_dict(self):
        return {}


class _TwoBatches:
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def iter_from(self, start):
        return iter(self.batches[start:])


def test_train_one_epoch_steps_every_batch_and_returns_the_mean_loss(tmp_path):
    cfg = TrainConfig(epochs=1, model_ema=False, log_interval=0, checkpoint_interval=0, batch_size=4)
    model = _tiny_model()
    start, initial = copy.deepcopy(model), copy.deepcopy(model)
    task = ClassificationTask()
    task.criterion = nn.CrossEntropyLoss()
    batches = [_batch(1), _batch(2)]
    plan = make_plan(cfg, steps_per_epoch=2, channels_last=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    t = Trainer(cfg=cfg, task=task, d=Dist(), device=torch.device("cpu"), run_dir=tmp_path,
                info=RunInfo("tiny", 3, 3, ["a", "b", "c"], cfg.to_dict()), model=model, module=model,
                loader=_TwoBatches(batches), val_loader=None, optimizer=opt, scheduler=_Constant(),
                scaler=torch.amp.GradScaler("cpu", enabled=False), ema=None, plan=plan, budget=None,
                steps_per_epoch=2, channels_last=False, log=MetricsLog(tmp_path, enabled=False))
    t.step_loss = make_step_loss(model, task, t.device, "none")
    state = TrainState("top1")
    stats = train_one_epoch(t, state, StopFlag())

    # the same two SGD steps by hand
    ref_opt = torch.optim.SGD(start.parameters(), lr=0.5)
    losses = []
    for b in batches:
        ref_opt.zero_grad()
        loss = nn.functional.cross_entropy(start(b.images), b.labels)
        loss.backward()
        ref_opt.step()
        losses.append(loss.item())
    assert (state.global_step, state.step, state.loss_count) == (2, 2, 2)
    assert stats.loss == pytest.approx(sum(losses) / 2, abs=1e-6) and stats.seen == 8
    moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), initial.parameters()))
    assert moved > 1e-3                                  # the weights moved
    for a, b in zip(model.parameters(), start.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # ... exactly as the two steps move them
    assert t.train_time > 0
    assert not (tmp_path / ckpt_io.LAST).exists()        # the epoch's end (end_epoch) saves, not the steps


def test_a_task_missing_part_of_the_protocol_cannot_be_made():
    from ghostnetv3.engine.task import Task

    class NoLoss(Task):
        def load_datasets(self, cfg): ...
        def build_model(self, cfg, num_classes, in_chans): ...
        def train_loader(self, cfg, train_set, d, device): ...
        def val_loader(self, cfg, val_set, device): ...
        def evaluate(self, model, loader, device, amp="none"): ...

    with pytest.raises(TypeError, match="loss"):
        NoLoss()
