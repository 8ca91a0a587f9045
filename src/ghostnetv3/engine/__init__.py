"""Engine: the training loop, checkpoints, EMA, distributed, evaluation and plots.

    from ghostnetv3.engine import load_config
    from ghostnetv3.engine.train import train
    from ghostnetv3.engine.evaluate import evaluate_checkpoint
    summary = train(load_config("recipes/fashion_mnist.yaml", epochs=1))
    print(evaluate_checkpoint(summary["run_dir"])["fused"]["top1"])

The same keys drive `ghostnetv3 train -c RECIPE --key value`, `ghostnetv3 eval` and `ghostnetv3 plot`.
"""
from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
