import json

import numpy as np
import onnx
import pytest

from ghostnetv3.cli import main
from ghostnetv3.deploy.export import export_model, onnx_session
from ghostnetv3.deploy.load import load_for_deploy
from ghostnetv3.deploy.quantize import quantize

from deploy_helpers import IMG


def test_quantize_without_calibration_data_is_one_clear_error(run_dir, capsys):
    rc = main(["quantize", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1
    assert "--calib-data" in err[0] and "fashion-mnist" in err[0]


@pytest.mark.parametrize("source", ["run", "onnx"])
def test_quantize_on_fashion_mnist(run_dir, tmp_path, source, capsys):
    if source == "run":
        rc = main(["quantize", str(run_dir), "--calib-data", "fashion-mnist", "--calib-size", "32",
                   "--eval-size", "64", "--json", str(tmp_path / "q.json")])
        assert rc == 0
        report = json.loads((tmp_path / "q.json").read_text())
        assert "top-1" in capsys.readouterr().out
    else:  # a static-batch fp32 ONNX file, quantized on the metadata export wrote into it
        fp32 = tmp_path / "fp32.onnx"
        model, cfg = load_for_deploy(run_dir)
        export_model(model, fp32, "onnx", (1, IMG, IMG), dynamic_batch=False, cfg=cfg, log=lambda m: None)
        report = quantize(fp32, "fashion-mnist", calib_size=16,
                          eval_size=32, output=str(tmp_path / "q.onnx"), log=lambda m: None)
    assert report["calib_images"] == (32 if source == "run" else 16)
    assert report["eval_images"] == (64 if source == "run" else 32)
    assert 0 <= report["int8_top1"] <= 100 and 0 <= report["fp32_top1"] <= 100
    assert report["int8_size_bytes"] < report["fp32_size_bytes"] / 2
    int8 = onnx.load(report["int8_onnx"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    sess = onnx_session(report["int8_onnx"])
    batch = 2 if source == "run" else 1
    out = sess.run(None, {"input": np.random.rand(batch, 1, IMG, IMG).astype(np.float32)})[0]
    assert out.shape == (batch, 10) and np.isfinite(out).all()
