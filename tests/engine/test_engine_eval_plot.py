import json

import pytest
import torch

from engine_helpers import load, run_cli, tiny_config
from ghostnetv3.engine.evaluate import evaluate_checkpoint
from ghostnetv3.engine.plot import plot_run
from ghostnetv3.engine.train import train


@pytest.fixture(scope="module")
def ghost_run(tmp_path_factory):
    """GhostNetV3 (train form, 3 branches) trained for a few steps at 32 px, EMA on."""
    from ghostnetv3.data import load_dataset
    from ghostnetv3.engine.splits import subset

    out = tmp_path_factory.mktemp("ghost")
    cfg = tiny_config(out, model="ghostnetv3_050", width=0.1, stem_stride=2, img_size=32, padding=4, epochs=2,
                      train_subset=32,
                      val_subset=64, batch_size=16, model_ema_decay=0.5, drop_rate=0.0, log_interval=1)
    val = subset(load_dataset("fashion-mnist", "val", image_size=32), 64, cfg.seed + 1)
    summary = train(cfg, train_set=subset(load_dataset("fashion-mnist", "train", image_size=32), 32, cfg.seed),
                    val_set=val)
    return out / "run", summary, val


def test_eval_reports_raw_ema_and_fused(ghost_run):
    run_dir, summary, val = ghost_run
    r = evaluate_checkpoint(run_dir, val_set=val, weights="ema")  # fuse the EMA weights (default: best_source)
    assert r["checkpoint"].endswith("best.pt") and r["n"] == 64 and r["fused_from"] == "ema"
    best = load(run_dir / "best.pt")
    # eval of the saved weights (train form) reproduces what training logged (fused copies) for that epoch
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"type": "epoch"' in line][best["epoch"] - 1]
    assert abs(r["raw"]["top1"] - logged["val_top1"]) <= 100 / 64 + 1e-9
    assert abs(r["ema"]["top1"] - logged["ema_top1"]) <= 100 / 64 + 1e-9
    assert r["ema"]["loss"] == pytest.approx(logged["ema_loss"], abs=1e-4)
    assert r["fused"]["loss"] == pytest.approx(logged["ema_loss"], abs=1e-6)  # both are the fused EMA
    # the fused model is a different network (fewer convs) computing the same function
    assert r["fusion_max_diff"] < 1e-3
    assert r["fused"]["loss"] == pytest.approx(r["ema"]["loss"], abs=1e-4)
    assert abs(r["fused"]["top1"] - r["ema"]["top1"]) <= 100 / 64 + 1e-9
    assert best["best_source"] in ("raw", "ema") and summary["best_source"] == best["best_source"]
    assert max(logged["val_top1"], logged["ema_top1"]) == pytest.approx(best["metrics"]["best_top1"])


def test_eval_cli_table_and_missing_checkpoint(ghost_run, tmp_path):
    run_dir, _, _ = ghost_run
    r = run_cli(["eval", str(run_dir), "--val-subset", "64", "--weights", "ema"])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line.split()[0] + (" " + line.split()[1] if line.startswith("fused") else ""): line
            for line in r.stdout.splitlines()[2:5]}
    assert set(rows) == {"raw", "EMA", "fused ema"}, r.stdout
    assert "fusion max |diff|" in r.stdout
    r = run_cli(["eval", str(tmp_path)])
    assert r.returncode == 1 and "no checkpoint in" in r.stderr


def test_plot_writes_png(ghost_run, tmp_path):
    run_dir, _, _ = ghost_run
    out = plot_run(run_dir, tmp_path / "curves.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plot_run(tmp_path)


def test_checkpoints_load_weights_only_and_hold_everything(ghost_run):
    run_dir, _, _ = ghost_run
    last = load(run_dir / "last.pt")  # weights_only=True: no pickled objects inside
    for key in ("state_dict", "state_dict_ema", "optimizer", "scheduler", "scaler", "rng", "epoch", "step",
                "global_step", "config", "model_name", "classes"):
        assert key in last, key
    assert last["config"]["model"] == "ghostnetv3_050" and isinstance(last["rng"][0]["torch"], torch.Tensor)
    saved_cfg = (run_dir / "config.yaml").read_text()
    assert "width: 0.1" in saved_cfg and "stem_stride: 2" in saved_cfg
