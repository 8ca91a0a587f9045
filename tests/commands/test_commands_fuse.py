"""`ghostnetv3 fuse` (ghostnetv3.commands.fuse): fuse, verify, save the fused weights."""
import torch
from safetensors import safe_open

from ghostnetv3.cli import main
from ghostnetv3.models import create_model, load_checkpoint, save_state_dict
from ghostnetv3.rep import RepConv2d, reparameterize

ARGS = ["ghostnetv3_050", "--width", "0.1", "--num-classes", "4", "--input-size", "1", "32", "32"]


def test_fuse_loads_weights_verifies_and_saves_the_fused_model(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("ghostnetv3_050", width=0.1, num_classes=4, in_chans=1)
    save_state_dict(model.state_dict(), str(tmp_path / "w.safetensors"))
    out = tmp_path / "fused.safetensors"
    assert main(["fuse", *ARGS, "--checkpoint", str(tmp_path / "w.safetensors"), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("loaded weights of w.safetensors")
    assert lines[1].startswith("fused ghostnetv3_050: max |train form - fused| = ")
    assert lines[1].endswith("on 2 random inputs 1x32x32") and lines[2] == f"saved fused weights to {out}"
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["form"] == "fused" and meta["input_size"] == "[1, 32, 32]"
    fused = reparameterize(model.eval())
    target = load_checkpoint(reparameterize(create_model("ghostnetv3_050", width=0.1, num_classes=4,
                                                         in_chans=1).eval()), str(out))
    assert not any(isinstance(m, RepConv2d) for m in target.modules())
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(target(x), fused(x))


def test_fuse_beyond_the_tolerance_fails_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "fused.safetensors"
    assert main(["fuse", *ARGS, "--tolerance", "-1", "-o", str(out)]) == 1
    assert "exceeds tolerance -1.0e+00" in capsys.readouterr().out
    assert not out.exists()
