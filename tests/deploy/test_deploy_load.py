import pytest
import torch

from ghostnetv3.deploy.load import load_for_deploy

from deploy_helpers import MODEL, IMG


def test_run_dir_prefers_ema_and_reads_config(run_dir, capsys):
    model, cfg = load_for_deploy(run_dir)
    # num_classes None in config.yaml and in the saved config ('from the dataset') is no edit
    assert "differs from the config inside" not in capsys.readouterr().err
    ema = torch.load(run_dir / "best.pt", weights_only=True)["state_dict_ema"]
    assert not model.training
    assert torch.equal(model.classifier.bias, ema["classifier.bias"])
    assert cfg["weights"] == "ema"
    assert (cfg["model"], cfg["num_classes"], cfg["in_chans"], cfg["img_size"]) == (MODEL, 10, 1, IMG)
    assert cfg["data"] == "fashion-mnist"


def test_checkpoint_file_and_model_name(run_dir, tmp_path):
    model, cfg = load_for_deploy(run_dir / "best.pt")
    assert cfg["num_classes"] == 10 and cfg["weights"] == "ema"
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(ValueError, match="--model"):
        load_for_deploy(bare)
    m2, cfg2 = load_for_deploy(bare, model=MODEL)
    assert (cfg2["num_classes"], cfg2["in_chans"]) == (10, 1)  # read off the weights
    assert torch.equal(m2.classifier.bias, model.classifier.bias)
    m3, cfg3 = load_for_deploy(MODEL, num_classes=7)
    assert cfg3["weights"] == "random" and m3.classifier.out_features == 7


def test_bad_sources():
    with pytest.raises(ValueError, match="not a run directory"):
        load_for_deploy("no_such_model_xyz")
    with pytest.raises(FileNotFoundError):
        load_for_deploy("missing/run")


def test_raw_weights_when_the_run_chose_them(run_dir, tmp_path):
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    ckpt["best_source"] = "raw"  # a short run whose EMA had not caught up on validation
    torch.save(ckpt, tmp_path / "best.pt")
    (tmp_path / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    model, cfg = load_for_deploy(tmp_path)
    assert cfg["weights"] == "raw"
    assert torch.equal(model.classifier.bias, ckpt["state_dict"]["classifier.bias"])
