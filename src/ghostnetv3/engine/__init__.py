"""Engine: the training loop, checkpoints, EMA, distributed, evaluation and plots.

    from ghostnetv3.engine import load_config
    from ghostnetv3.engine.train import train
    from ghostnetv3.engine.evaluate import evaluate_checkpoint
    summary = train(load_config("recipes/fashion_mnist.yaml", epochs=1))
    print(evaluate_checkpoint(summary["run_dir"])["fused"]["top1"])

The same keys drive `ghostnetv3 train -c RECIPE --key value`, `ghostnetv3 eval` and `ghostnetv3 plot`.
A recipe with a `teacher` trains through `ghostnetv3.distill.train(cfg)` (distillation is a task
above the engine: `engine.task`).

Where things live: `train` (set-up), `loop` (`train_one_epoch`, `validate`), `task`
(`ClassificationTask`), `state` (`TrainState`, writes the checkpoint files), `run` (`Run`: reads a
run once), `weights` (which weights a command takes), `checkpoint` (the files' names and keys,
atomic saves), `distributed` (ranks, seeds, autocast), `model_factory`, `datasets`, `loaders`,
`plan` (the run plan: batch, layout, schedule, EMA decay, time budget), `metrics_log`, `signals`.
"""
from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
