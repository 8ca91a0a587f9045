"""Issue 16's smaller items: counts, modes, headers, --json."""
import json
import os

import numpy as np
import torch

from cli_helpers import TINY_TRAIN, cli


def _folder(root, bad: bool):
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / c / f"{i}.png")
    if bad:
        (root / "a" / "broken.png").write_bytes(b"not a png")


def test_one_bad_image_is_counted_once_and_kd_is_in_the_header(tiny_run, tmp_path):
    data = tmp_path / "folder"
    _folder(data, bad=True)
    r = cli("train", "--model", "ghostnetv3_050", "--width", "0.1", "--img-size", "32", "--crop-mode", "pad_crop",
            "--data", data, "--data-mode", "memory", "--on-bad-image", "skip", "-b", "8", "--epochs", "1",
            "--warmup-epochs", "0", "--output", tmp_path, "--experiment", "bad")
    assert r.returncode == 0, r.stderr[-2000:]
    assert ", 1 unreadable skipped |" in r.stdout and "KD from" not in r.stdout
    teacher, _ = tiny_run
    r = cli("train", *TINY_TRAIN, "--epochs", "1", "--teacher", teacher, "--output", tmp_path, "--experiment", "kd")
    assert r.returncode == 0, r.stderr[-2000:]
    header = next(line for line in r.stdout.splitlines() if " train / " in line)
    assert f"KD from {teacher} (soft-ce, weight 1) |" in header


def test_fused_weights_are_not_private_files(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "fused.safetensors"
    r = cli("fuse", "ghostnetv3_050", "--width", "0.1", "--stem-stride", "2", "--num-classes", "10",
            "--input-size", "1", "32", "32", "--checkpoint", run_dir, "-o", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "loaded " in r.stdout and "of best.pt" in r.stdout  # which weights, in words
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask


def test_cache_teacher_reports_the_file_size(tiny_run, tmp_path):
    teacher, _ = tiny_run
    out = tmp_path / "t.kdcache"
    r = cli("cache-teacher", "--input-size", "1", "32", "32", "--crop-mode", "pad_crop", "--train-subset", "64",
            "-b", "16", "--data-dir", "fashion-mnist", "--seed", "3",
            "--teacher", teacher, "--views", "1", "-o", out, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["bytes"] == out.stat().st_size


def test_quantize_bare_json_prints_only_json(tiny_run):
    run_dir, _ = tiny_run
    r = cli("quantize", run_dir, "--calib-data", "fashion-mnist", "--calib-size", "16", "--eval-size", "32",
            "--json", "--weights", "raw")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)  # the whole of stdout is one JSON document: no table before it
    assert report["eval_images"] == 32 and 0 <= report["int8_top1"] <= 100
    assert torch.load(run_dir / "best.pt", weights_only=True)["state_dict"]  # the run is untouched
