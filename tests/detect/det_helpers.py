"""Shared by the detection tests."""
from ghostnetv3.engine.config import TrainConfig

CANVAS = 64  # the smallest canvas the bundled builder allows: fast tests


def det_config(out, **kw) -> TrainConfig:
    base = dict(model="ghostnetv3_050", data="fashion-detect", img_size=CANVAS, epochs=2, batch_size=16,
                opt="adamw", lr=2e-3, weight_decay=1e-4, warmup_epochs=0, smoothing=0.0, clip_grad=10.0,
                model_ema=True, model_ema_decay=0.9, model_ema_warmup=True, hflip=0.5,
                output=str(out), experiment="run", log_interval=1, train_subset=48, val_subset=12)
    base.update(kw)
    return TrainConfig(**base)
