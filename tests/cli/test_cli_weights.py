"""One rule for which weights a command takes from a run (ghostnetv3.engine.weights, read through
ghostnetv3.engine.run), and one meaning of "the validation set": eval's fused row is the model export
writes and predict runs."""
import json

import numpy as np
import pytest
import torch

from cli_helpers import cli
from ghostnetv3.engine.run import pick_weights
from ghostnetv3.engine.weights import choose_weights

SD = {"w": torch.zeros(1)}


def test_the_rule():
    assert choose_weights({"state_dict": SD, "state_dict_ema": SD, "best_source": "raw"}) == \
        ("raw", "the run's validation picked them")
    assert choose_weights({"state_dict": SD, "state_dict_ema": SD, "best_source": "ema"})[0] == "ema"
    assert choose_weights({"state_dict": SD, "state_dict_ema": SD})[0] == "ema"  # e.g. the official release
    assert choose_weights({"state_dict": SD, "state_dict_ema": None})[0] == "raw"
    assert choose_weights({"state_dict": SD, "state_dict_ema": SD, "best_source": "raw"}, "ema") == ("ema", "as asked")
    assert choose_weights(SD) == ("plain", "the only weights in the file")
    with pytest.raises(ValueError, match="no EMA weights.*--weights raw"):
        choose_weights({"state_dict": SD, "state_dict_ema": None}, "ema")


def test_best_last_and_files(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    assert pick_weights(run_dir).path.name == "best.pt"
    assert pick_weights(run_dir, checkpoint="last").path.name == "last.pt"
    with pytest.raises(ValueError, match="is a file already"):
        pick_weights(run_dir / "last.pt", checkpoint="best")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        pick_weights(tmp_path)


def _eval(run_dir, *flags):
    r = cli("eval", run_dir, "--json", *flags)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_eval_fused_row_is_what_export_writes(tiny_run, tmp_path):
    from ghostnetv3.deploy.export import onnx_session
    from ghostnetv3.deploy.load import load_for_deploy
    from ghostnetv3.deploy.prepare import to_deploy_form

    run_dir, _ = tiny_run
    best = torch.load(run_dir / "best.pt", weights_only=True)
    default = _eval(run_dir)
    assert default["fused_from"] == best["best_source"] and default["checkpoint"].endswith("best.pt")
    other = "raw" if default["fused_from"] == "ema" else "ema"
    label = {"raw": "raw weights", "ema": "EMA weights"}
    outs = {}
    for flags, weights in (([], default["fused_from"]), (["--weights", other], other)):
        onnx = tmp_path / f"{weights}.onnx"
        r = cli("export", run_dir, "-o", onnx, *flags)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"({label[weights]} of best.pt" in r.stdout.splitlines()[0], r.stdout
        model, cfg = load_for_deploy(run_dir, weights=weights)
        fused, _ = to_deploy_form(model, log=lambda m: None)
        x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        sess = onnx_session(onnx)
        outs[weights] = sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0]
        with torch.no_grad():
            assert np.abs(outs[weights] - fused(x[:1]).numpy()).max() < 1e-4
    assert np.abs(outs["raw"] - outs["ema"]).max() > 1e-4  # the choice is real: two different models
    # eval with the other choice fuses the other weights, and says so
    r = cli("eval", run_dir, "--weights", other, "--checkpoint", "last", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"fused {other}" in r.stdout and f"{label[other]} of last.pt (as asked)" in r.stdout


def test_eval_validation_set_the_runs_or_all_of_it(tiny_run):
    run_dir, _ = tiny_run
    r = cli("eval", run_dir, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (", the run's own validation set: 48 of 10000 images of the validation split (seeded subset: seed 4, "
            "the run's --seed 3 + 1); --val-subset all scores the whole split") in r.stdout
    full = _eval(run_dir, "--val-subset", "all")
    assert full["n"] == 10000 and full["val_set"] == "all 10000 images of the validation split"
    assert _eval(run_dir, "--val-subset", "0")["n"] == 10000


def test_eval_of_an_image_points_to_predict(images):
    paths, _ = images
    r = cli("eval", paths[0])
    assert r.returncode == 1 and "is an image, not a checkpoint" in r.stderr and "ghostnetv3 predict" in r.stderr
    assert "weights_only" not in r.stderr and "Traceback" not in r.stderr
