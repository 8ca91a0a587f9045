"""Issue 24's rules for the package's shape, checked by scripts/check_layers.py: no function over 100
lines (80 in engine/), no function-local project imports outside CLI modules and package __init__s,
lazy third-party imports marked `# lazy:`, no cross-module `_private` imports, no import reaching up
the layers, no import circle."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_layers.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_package_keeps_every_layer_rule():
    found = _checker().scan()
    broken = {k: v for k, v in found.items() if v}
    assert not broken, broken


def test_strict_exits_1_naming_what_broke(tmp_path):
    # a toy package breaking each rule once: the checker must see every one
    pkg = tmp_path / "ghostnetv3"
    (pkg / "data").mkdir(parents=True)
    (pkg / "engine").mkdir()
    for d in (pkg, pkg / "data", pkg / "engine"):
        (d / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text(
        "from ghostnetv3.engine import b\n"            # upward + half of a circle
        "def f():\n    import numpy\n    from ghostnetv3.data import c\n")  # unmarked lazy, local project
    (pkg / "data" / "c.py").write_text("import json  # fine\n_x = 1\n")
    (pkg / "engine" / "b.py").write_text(
        "from ghostnetv3.data.a import f\nfrom ghostnetv3.data.c import _x\n"
        "def long():\n" + "    x = 1\n" * 85)
    found = _checker().scan(pkg)
    assert found["upward_imports"] == ["ghostnetv3.data.a:1 ghostnetv3.data.a -> ghostnetv3.engine.b"]
    assert found["local_project_imports"] == ["ghostnetv3.data.a:4 ghostnetv3.data.c"]
    assert found["lazy_imports_without_reason"] == ["ghostnetv3.data.a:3 numpy"]
    assert found["private_imports"] == ["ghostnetv3.engine.b:2 ghostnetv3.data.c._x"]
    assert found["long_functions"] == ["ghostnetv3.engine.b:long 86 lines (limit 80)"]
    assert found["import_cycles"] == ["ghostnetv3.data.a <-> ghostnetv3.engine.b"]


def test_the_script_runs_strict_from_the_command_line():
    out = subprocess.run([sys.executable, str(SCRIPT), "--strict"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:]
    assert '"long_functions": 0' in out.stdout


def test_top_level_train_is_the_kd_aware_entry_point():
    import ghostnetv3
    from ghostnetv3.distill.task import train
    assert ghostnetv3.train is train
