"""Issue 25's deploy items: INT8 calibration on any number of images, destinations checked before
the work, --model on quantize, the input contract in every exported file, progress lines and no
third-party log spam, SIGTERM during an export, the bench chart's legend."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import ghostnetv3.deploy.steps as steps
from ghostnetv3.cli import main
from ghostnetv3.deploy.bench import latency_figure
from ghostnetv3.deploy.contract import read_input_contract
from ghostnetv3.deploy.export import export_model, read_metadata
from ghostnetv3.deploy.backends.onnx import even_batches
from ghostnetv3.errors import SaveError
from ghostnetv3.paths import check_writable

from deploy_helpers import IMG, MODEL, tiny_model

# the data layer's default normalization for one gray channel: ImageNet's RGB stats averaged
GRAY_MEAN, GRAY_STD = (0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3


def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody can create files in: immutable for root (chmod does not stop root), else 0555."""
    d = tmp_path / "ro"
    d.mkdir()
    lock, unlock = (["chattr", "+i", str(d)], ["chattr", "-i", str(d)]) if os.geteuid() == 0 else (None, None)
    if lock:
        subprocess.run(lock, check=True)
    else:
        d.chmod(0o555)
    yield d
    if unlock:
        subprocess.run(unlock, check=True)
    else:
        d.chmod(0o755)


@pytest.fixture
def run_copy(run_dir, tmp_path):
    """A private copy of the session's run directory (quantize writes RUN/deploy into it)."""
    return shutil.copytree(run_dir, tmp_path / "run")


# ---------------------------------------------------------------- 4. calibration on any number of images

def test_even_batches_use_every_image_once_in_equal_batches():
    x = np.arange(162, dtype=np.float32).reshape(162, 1, 1, 1)
    batches, n = even_batches([x[:64], x[64:128], x[128:]])  # 64 + 64 + 34, as the folder
    assert n == 162 and {len(b) for b in batches} == {54}
    assert np.array_equal(np.concatenate(batches), x)
    batches, n = even_batches([x[:64], x[64:101]])  # 101 is prime: batches of 1
    assert n == 101 and {len(b) for b in batches} == {1}
    batches, n = even_batches([x[:64], x[64:100]], fixed=8)  # a static batch of 8: the tail completed
    assert n == 100 and {len(b) for b in batches} == {8} and len(batches) == 13
    assert even_batches([]) == ([], 0)


def test_quantize_calib_size_not_a_multiple_of_the_batch(run_copy, capsys):
    rc = main(["quantize", str(run_copy), "--calib-data", "fashion-mnist", "--calib-size", "100",
               "--eval-size", "32", "--json", str(run_copy / "q.json")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    r = json.loads((run_copy / "q.json").read_text())
    assert r["calib_images"] == 100 and r["calib_batch"] == 50 and r["eval_images"] == 32
    assert "calibrating INT8 on 100 images of fashion-mnist:train" in out and "scoring fp32 and INT8 on" in out
    contract = read_input_contract(r["int8_onnx"])  # the INT8 file carries the contract too (item 11)
    assert contract["mean"] == pytest.approx([GRAY_MEAN]) and contract["assumed"] == []


def _image_folder(root, n: int, size: int = 48) -> None:
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        a[..., i % 3] = 200
        Image.fromarray(a).save(d / f"{i}.png")


def test_quantize_on_a_162_image_folder(tmp_path, capsys):
    _image_folder(tmp_path / "data", 162)
    out = tmp_path / "q" / "m.int8.onnx"
    rc = main(["quantize", MODEL, "--input-size", "3", "32", "32", "--calib-data", str(tmp_path / "data"),
               "--no-eval", "-o", str(out), "--json", str(tmp_path / "q.json")])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((tmp_path / "q.json").read_text())
    assert out.is_file() and r["calib_images"] > 64 and r["calib_images"] % r["calib_batch"] == 0


def test_a_calibrator_failure_keeps_its_traceback_and_leaves_no_deploy_folder(run_copy, monkeypatch):
    import onnxruntime.quantization

    def broken(*a, **kw):  # what numpy raised inside onnxruntime's histogram calibrator
        raise ValueError("setting an array element with a sequence. The requested array has an "
                         "inhomogeneous shape after 1 dimensions.")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", broken)
    with pytest.raises(RuntimeError, match="onnxruntime's INT8 calibration failed"):  # a bug, not a user error
        main(["quantize", str(run_copy), "--calib-data", "fashion-mnist", "--calib-size", "8", "--no-eval"])
    assert not (run_copy / "deploy").exists()


# ---------------------------------------------------------------- 5. destinations checked first

@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_into_an_unwritable_folder_is_one_line_before_any_work(unwritable, fmt, capsys):
    rc = main(["export", MODEL, "--num-classes", "10", "--input-size", "1", "32", "32", "--format", fmt,
               "-o", str(unwritable / "m.out")])
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert "--output" in err[0] and "cannot write in" in err[0] and str(unwritable) in err[0]
    assert "fusion" not in out and "writing" not in out  # refused before the work
    assert os.listdir(unwritable) == []


def test_output_under_a_file_and_an_output_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc = main(["export", MODEL, "--num-classes", "10", "--input-size", "1", "32", "32",
               "-o", str(tmp_path / "afile" / "m.onnx")])
    err = _err_lines(capsys)
    assert rc == 1 and len(err) == 1 and "is a file, so no folder can be made under it" in err[0]
    rc = main(["export", MODEL, "--num-classes", "10", "--input-size", "1", "32", "32", "-o", str(tmp_path)])
    err = _err_lines(capsys)
    assert rc == 1 and len(err) == 1 and "is a folder; give a file name" in err[0]
    rc = main(["bench", MODEL, "--backends", "torch", "--report", str(tmp_path / "afile" / "r")])
    err = _err_lines(capsys)
    assert rc == 1 and len(err) == 1 and "--report" in err[0] and "is a file" in err[0]


def test_quantize_and_plot_into_an_unwritable_folder(run_copy, unwritable, capsys):
    rc = main(["quantize", str(run_copy), "--calib-data", "fashion-mnist", "-o", str(unwritable / "q.onnx")])
    err = _err_lines(capsys)
    assert rc == 1 and len(err) == 1 and "--output" in err[0] and "cannot write in" in err[0]
    rc = main(["plot", str(run_copy), "-o", str(unwritable / "curves.png")])
    err = _err_lines(capsys)
    assert rc == 1 and len(err) == 1 and err[0].startswith("ghostnetv3 plot: error: -o ") and "cannot write" in err[0]


def test_check_writable_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "m.onnx"
    assert check_writable(target) == target
    assert os.listdir(tmp_path) == []  # neither the folders nor the probe file
    (tmp_path / "f").write_text("x")
    with pytest.raises(SaveError, match="is a file, not a folder"):
        check_writable(tmp_path / "f", "--report", folder=True)


# ---------------------------------------------------------------- 7. --model on quantize; exported files

def test_quantize_a_bare_checkpoint_with_model(tmp_path, capsys):
    ckpt = tmp_path / "bare.pt"
    torch.save(tiny_model(in_chans=1).state_dict(), ckpt)
    rc = main(["quantize", str(ckpt), "--calib-data", "fashion-mnist"])
    err = _err_lines(capsys)
    assert rc == 1 and len(err) == 1 and "pass --model NAME" in err[0]
    rc = main(["quantize", str(ckpt), "--model", MODEL, "--input-size", "1", "32", "32", "--calib-data",
               "fashion-mnist", "--calib-size", "8", "--no-eval"])  # the advice works
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "bare_deploy").iterdir()) == ["model_fp32.onnx", "model_int8.onnx"]


@pytest.mark.parametrize("suffix", [".tflite", ".pte", ".xml"])
def test_quantize_an_exported_file_says_what_to_pass(tmp_path, suffix, capsys):
    f = tmp_path / f"m{suffix}"
    f.write_bytes(b"not read: refused by its kind")
    rc = main(["quantize", str(f), "--calib-data", "fashion-mnist"])
    err = _err_lines(capsys)
    assert rc == 1 and len(err) == 1
    assert "is an exported" in err[0] and "run directory or checkpoint it came from" in err[0]


# ---------------------------------------------------------------- 11. the input contract in every file

@pytest.mark.parametrize("fmt,name", [("onnx", "m.onnx"), ("torchscript", "m.pt"), ("openvino", "m.xml")])
def test_every_exported_file_carries_the_input_contract(run_dir, tmp_path, fmt, name):
    from ghostnetv3.deploy.load import load_for_deploy
    model, cfg = load_for_deploy(run_dir)  # config.yaml leaves mean/std unset: the data layer's defaults
    assert cfg.get("mean") is None
    export_model(model, tmp_path / name, fmt, (1, IMG, IMG), cfg=cfg, log=lambda m: None)
    stored = read_metadata(tmp_path / name)  # in the file (or its .json) itself, not filled by the reader
    assert stored["mean"] == pytest.approx([GRAY_MEAN]) and stored["std"] == pytest.approx([GRAY_STD])
    assert stored["interpolation"] == "bilinear" and stored["eval_crop_pct"] == 1.0
    c = read_input_contract(tmp_path / name)
    assert (c["in_chans"], c["img_size"], c["assumed"]) == (1, IMG, [])
    assert "one gray channel" in c["preprocess"] and f"centre crop {IMG}x{IMG}" in c["preprocess"]
    if fmt == "openvino":
        side = json.loads((tmp_path / "m.xml.json").read_text())
        assert side["mean"] == pytest.approx([GRAY_MEAN]) and side["preprocess"] == c["preprocess"]


def test_read_input_contract_of_a_foreign_file_names_what_it_assumed(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(4, 2)).eval()  # exported by plain torch.onnx: no metadata
    torch.onnx.export(m, (torch.zeros(1, 3, 32, 32),), str(tmp_path / "f.onnx"), dynamo=False,
                      input_names=["input"])
    c = read_input_contract(tmp_path / "f.onnx")
    assert (c["in_chans"], c["img_size"]) == (3, 32)  # from the static input shape
    assert c["assumed"] == ["mean", "std", "interpolation", "eval_crop_pct"]
    assert c["mean"] == pytest.approx([0.485, 0.456, 0.406])
    with pytest.raises(ValueError, match="fixed at export"):
        read_input_contract(tmp_path / "f.onnx", in_chans=1)


# ---------------------------------------------------------------- 14. progress, no third-party spam

def test_step_says_what_it_does_while_it_runs():
    lines: list[str] = []
    with steps.step(lines.append, "lowering", every=0.02):
        time.sleep(0.15)
    assert lines[0] == "lowering ..." and any(ln.startswith("  still lowering (") for ln in lines[1:])


def test_export_and_bench_print_their_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(steps, "HEARTBEAT_S", 0.05)
    rc = main(["export", MODEL, "--num-classes", "10", "--input-size", "1", "32", "32", "-o", str(tmp_path / "m.onnx")])
    out = capsys.readouterr().out
    assert rc == 0 and "writing onnx ..." in out and "  still writing onnx (" in out
    monkeypatch.setattr(steps, "HEARTBEAT_S", 30.0)
    rc = main(["bench", MODEL, "--input-size", "1", "32", "32", "--batch-sizes", "1", "--backends",
               "torch,onnxruntime", "--threads", "1", "--repeats", "1", "--warmup", "0", "--rounds", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "exporting ONNX and quantizing it to INT8 (onnxruntime) ..." in out


_SPAM = ("absl", "oneDNN", "TensorFlow Lite XNNPACK delegate", "_pytree", "register_constant")


def test_tflite_export_shows_steps_and_no_third_party_log_lines(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "ghostnetv3.cli", "export", "test_efficientnet", "--num-classes", "3",
                        "--input-size", "1", "32", "32", "--format", "tflite", "-o", str(tmp_path / "m.tflite")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "writing tflite ..." in p.stdout and "max |tflite - pytorch|" in p.stdout
    noise = [ln for ln in (p.stdout + p.stderr).splitlines() if any(s in ln for s in _SPAM)]
    assert noise == [], noise


# ---------------------------------------------------------------- 15. SIGTERM during an export

_SLOW_EXPORT = """
import sys, time
import ghostnetv3.deploy.export as ex
from ghostnetv3.cli import main
ex.verify_export = lambda *a, **kw: time.sleep(120)  # the temporary file is written: stop here
sys.exit(main(["export", "ghostnetv3_050", "--num-classes", "10", "--input-size", "1", "32", "32",
               "-o", sys.argv[1]]))
"""


def test_sigterm_during_export_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out" / "m.onnx"
    p = subprocess.Popen([sys.executable, "-c", _SLOW_EXPORT, str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (out.parent.is_dir() and any(f.name.startswith(".tmp-") for f in out.parent.iterdir())):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in err
    assert not out.parent.exists()  # neither the hidden temporary file nor the folder made for it


# ---------------------------------------------------------------- 17. the bench chart's legend

def test_bench_chart_has_an_fp32_int8_legend():
    rows = [{"backend": b, "batch_size": 1, "median_ms": ms} for b, ms in
            (("torch_eager_fp32", 3.0), ("onnxruntime_fp32", 2.0), ("onnxruntime_int8", 1.0))]
    fig = latency_figure({"model": MODEL, "input_size": [1, 32, 32], "latency": rows,
                          "machine": {"threads": 1, "load_avg_1m": 0.5}})
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["fp32", "INT8"]
    colors = {p.get_label(): p.get_facecolor() for p in legend.get_patches()}
    bars = fig.axes[0].patches
    assert bars[2].get_facecolor() == colors["INT8"] and bars[0].get_facecolor() == colors["fp32"]
