"""`ghostnetv3 info` and `ghostnetv3 models` (ghostnetv3.commands.info)."""
import json

from ghostnetv3.cli import main
from ghostnetv3.models import create_model
from ghostnetv3.models.registry import TIMM_NAMES
from ghostnetv3.rep import reparameterize
from ghostnetv3.rep.count import count_params_macs

ARGS = ["ghostnetv3_050", "--width", "0.1", "--num-classes", "4", "--input-size", "1", "32", "32"]


def test_info_json_row_counts_the_train_and_the_fused_form(capsys):
    assert main(["info", *ARGS, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    model = create_model("ghostnetv3_050", width=0.1, num_classes=4, in_chans=1).eval()
    train = count_params_macs(model, (1, 32, 32))
    fused = count_params_macs(reparameterize(model), (1, 32, 32))
    assert row == {"model": "ghostnetv3_050", "input_size": [1, 32, 32], "num_classes": 4,
                   "train_params": train[0], "train_macs": train[1],
                   "fused_params": fused[0], "fused_macs": fused[1]}
    assert row["fused_params"] < row["train_params"]


def test_info_table_shows_both_forms(capsys):
    assert main(["info", *ARGS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ghostnetv3_050  input 1x32x32  classes 4"
    assert [line.split()[0] for line in lines[1:]] == ["form", "train", "fused"]


def test_models_lists_ours_with_their_timm_names(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for ours, timm_name in TIMM_NAMES.items():
        assert any(line.split()[:2] == [ours, timm_name] for line in out.splitlines()), ours
    assert main(["models", "--timm", "gnv3_1*"]) == 0
    assert capsys.readouterr().out.split() == ["gnv3_100", "gnv3_130", "gnv3_160"]
