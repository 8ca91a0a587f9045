import numpy as np
import pytest
import torch

from ghostnetv3.cli import main
from ghostnetv3.deploy import export as export_mod
from ghostnetv3.deploy.export import ExportMismatchError, export_model, onnx_session, read_metadata
from ghostnetv3.deploy.prepare import to_deploy_form

from deploy_helpers import IMG, MODEL, tiny_model

SIZE = (3, IMG, IMG)


@pytest.fixture(scope="module")
def fused():
    model, _ = to_deploy_form(tiny_model().eval(), log=lambda m: None)
    return model


def test_onnx_round_trip_dynamic_batch(fused, tmp_path):
    report = export_model(fused, tmp_path / "m.onnx", "onnx", SIZE, dynamic_batch=True,
                          cfg={"model": MODEL, "img_size": IMG, "in_chans": 3, "num_classes": 10})
    assert report["max_diff"] < 1e-4 and report["batch_sizes_checked"] == [1, 3]
    sess = onnx_session(tmp_path / "m.onnx")
    x = torch.randn(5, *SIZE)
    with torch.no_grad():
        ref = fused(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], ref, atol=1e-4, rtol=0)
    meta = read_metadata(tmp_path / "m.onnx")
    assert (meta["model"], meta["img_size"], meta["num_classes"]) == (MODEL, IMG, 10)
    assert meta["input_shape"] == [None, 3, IMG, IMG]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load: deprecated, still asked for
def test_torchscript_round_trip(fused, tmp_path):
    report = export_model(fused, tmp_path / "m.pt", "torchscript", SIZE, cfg={"model": MODEL})
    assert report["max_diff"] < 1e-4
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), fused(x), atol=1e-4, rtol=0)
    assert read_metadata(tmp_path / "m.pt")["model"] == MODEL


def test_train_mode_train_form_model_is_fused_with_a_message(tmp_path):
    model = tiny_model().train()
    logs = []
    report = export_model(model, tmp_path / "m.onnx", "onnx", SIZE, log=logs.append)
    assert report["fusion_was_training"] and report["fusion_was_train_form"]
    assert report["fusion_params_after"] < report["fusion_params_before"]
    assert any("train mode" in m for m in logs) and any("train form" in m for m in logs)
    assert model.training  # the caller's model is left as it was
    # the exported graph is the fused one: no BatchNorm survives as a separate op
    import onnx
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops


def test_cli_export_prints_difference(tmp_path, capsys):
    rc = main(["export", MODEL, "--num-classes", "10", "--input-size", *map(str, SIZE), "--format", "onnx",
               "--output", str(tmp_path / "m.onnx"), "--dynamic-batch"])
    out = capsys.readouterr().out
    assert rc == 0 and "max |onnx - pytorch| =" in out and "ok" in out
    assert "train form" in out  # a model name builds the train form; export fused it


def test_mismatch_exits_nonzero_with_the_difference(tmp_path, capsys, monkeypatch):
    real = export_mod.open_runner

    def corrupted(path, fmt):
        run = real(path, fmt)
        return lambda x: run(x) + 0.5  # an exporter bug, simulated
    monkeypatch.setattr(export_mod, "open_runner", corrupted)
    rc = main(["export", MODEL, "--num-classes", "10", "--input-size", *map(str, SIZE),
               "--format", "torchscript", "--output", str(tmp_path / "m.pt")])
    captured = capsys.readouterr()
    assert rc == 1
    assert "max |torchscript - pytorch| = 0.5" in captured.out and "FAIL" in captured.out
    assert "tolerance" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_zero_tolerance_on_a_perturbed_export(fused, tmp_path, monkeypatch):
    real = export_mod.open_runner
    monkeypatch.setattr(export_mod, "open_runner", lambda p, f: (lambda x: real(p, f)(x) * (1 + 1e-3)))
    with pytest.raises(ExportMismatchError) as e:
        export_model(fused, tmp_path / "m.onnx", "onnx", SIZE, tolerance=0.0)
    assert e.value.max_diff > 0


def test_cli_export_model_name_one_channel_32px(tmp_path, capsys):
    # 32 px with the stride-2 stem puts 1-pixel maps in front of the DFC attention: the legacy
    # exporter must still see constant pooling windows.
    out = tmp_path / "g.onnx"
    rc = main(["export", "ghostnetv3_050", "--format", "onnx", "-o", str(out), "--input-size", "1", "32", "32",
               "--num-classes", "10"])
    assert rc == 0 and out.exists()
    assert "max |onnx - pytorch|" in capsys.readouterr().out
