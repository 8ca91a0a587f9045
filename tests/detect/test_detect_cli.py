"""`ghostnetv3 detect ...`: eval, export with its numeric checks, and one-line errors."""
import json

import pytest

from ghostnetv3.cli import main


def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_eval_reports_raw_ema_and_fused(trained_run, capsys):
    rc, out, _ = run(["detect", "eval", str(trained_run[0]), "--json"], capsys)
    assert rc == 0
    r = json.loads(out)
    rows = {row["weights"]: row for row in r["rows"]}
    assert set(rows) == {"raw", "raw fused", "ema", "ema fused"}
    for src in ("raw", "ema"):
        assert rows[f"{src} fused"]["fusion_max_diff"] < 1e-4
        assert abs(rows[src]["map"] - rows[f"{src} fused"]["map"]) < 0.5
        assert 0 <= rows[src]["map"] <= rows[src]["map50"] <= 100


def test_export_onnx_checks_fused_and_file(trained_run, tmp_path, capsys):
    rc, out, _ = run(["detect", "export", str(trained_run[0]), "-o", str(tmp_path / "det.onnx")], capsys)
    assert rc == 0, out
    assert (tmp_path / "det.onnx").stat().st_size > 0
    assert "fused vs unfused" in out and "file vs PyTorch" in out
    # a tolerance nothing can meet: exit 1, nothing written, one line saying why
    rc, _, err = run(["detect", "export", str(trained_run[0]), "-o", str(tmp_path / "x.onnx"),
                      "--tolerance", "0"], capsys)
    assert rc == 1 and not (tmp_path / "x.onnx").exists()
    assert len(err.strip().splitlines()) == 1 and "differs from the unfused one" in err


@pytest.mark.parametrize("argv, message", [
    (["detect", "train", "--data", "/no/such/dir", "--epochs", "1"], "detection data '/no/such/dir' not found"),
    (["detect", "train", "--epochs", "1"], "detection data 'fashion-mnist' not found: use 'fashion-detect'"),
    (["detect", "train", "--data", "fashion-detect", "--model", "resnet18", "--img-size", "64", "--train-subset", "4", "--val-subset", "2"],
     "detection backbones are ghostnetv3_* / ghostnetv2_* models, not 'resnet18'"),
    (["detect", "train", "--data", "fashion-detect", "--mixup", "0.2", "--img-size", "64", "--train-subset", "4", "--val-subset", "2"],
     "detection training does not support --mixup"),
    (["detect", "train", "--data", "fashion-detect", "--img-size", "32", "--train-subset", "4"], "--img-size >= 64"),
    (["detect", "export", "RUN", "-o", "model.txt"], "the suffix picks the format: .onnx (ONNX) or .pt"),
    (["detect", "eval", "/no/such/run"], "no such run directory or checkpoint: /no/such/run"),
])
def test_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[1] == "export":
        argv = argv[:2] + [str(tmp_path)] + argv[3:]
        (tmp_path / "last.pt").write_bytes(b"")  # never read: the suffix is checked first
    rc, _, err = run(argv + (["--output", str(tmp_path)] if argv[1] == "train" else []), capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ghostnetv3 {argv[0]}: error: ") and message in lines[0], err


def test_eval_refuses_a_classification_run(tmp_path, capsys):
    import torch
    torch.save({"config": {"model": "ghostnetv3_050"}, "state_dict": {"classifier.weight": torch.zeros(1)}},
               tmp_path / "last.pt")
    rc, _, err = run(["detect", "eval", str(tmp_path)], capsys)
    assert rc == 1 and "holds a classification model, not a detector; use `ghostnetv3 eval`" in err


def test_unknown_flag_names_the_nearest_key(capsys):
    with pytest.raises(SystemExit) as e:
        main(["detect", "train", "--epoch", "3"])
    assert e.value.code == 2 and "did you mean --epochs?" in capsys.readouterr().err
