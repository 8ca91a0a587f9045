"""A broken .safetensors file is one line naming it, in every command that reads weights (issue 25, item 3):
engine/run.py reads them through ghostnetv3/safeload.py, as it reads .pt files."""
import pytest
import torch
from safetensors.torch import save_file

from ghostnetv3.cli import main

# what each breakage is called in the one line (safeload._why_safetensors_unreadable)
BREAKAGES = {"zero-byte": "it is empty (0 bytes)", "truncated": "it is truncated",
             "bad-header": "it is not a valid safetensors file"}


def _broken_safetensors(tmp_path, kind):
    good = tmp_path / "good.safetensors"
    save_file({"classifier.weight": torch.zeros(10, 16), "classifier.bias": torch.zeros(10)}, str(good))
    data = good.read_bytes()
    bad = tmp_path / f"{kind}.safetensors"
    bad.write_bytes({"zero-byte": b"", "truncated": data[: len(data) // 2],
                     "bad-header": (16).to_bytes(8, "little") + b"not a json head!" + data[24:]}[kind])
    return bad


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
@pytest.mark.parametrize("command", ["eval", "export", "fuse"])
def test_broken_safetensors_is_one_line_naming_the_file(tmp_path, capsys, command, kind):
    bad = _broken_safetensors(tmp_path, kind)
    out = tmp_path / "m.onnx"
    argv = {"eval": ["eval", str(bad)],
            "export": ["export", str(bad), "--model", "ghostnetv3_050", "-o", str(out)],
            "fuse": ["fuse", "ghostnetv3_050", "--checkpoint", str(bad)]}[command]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"ghostnetv3 {command}: error: cannot read checkpoint {bad}: {BREAKAGES[kind]}"), err
    assert "SafetensorError" not in err[0] and "Traceback" not in err[0]
    assert not out.exists()
