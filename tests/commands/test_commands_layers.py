"""The commands that drive the lower layers live with the CLI: models, rep and data hold no command
module and import nothing above their layer; predict (a library module) imports no CLI module."""
import ast
from pathlib import Path

import ghostnetv3

SRC = Path(ghostnetv3.__file__).parent
BASE = {"errors", "paths", "safeload"}
ALLOWED = {"data": BASE | {"data"}, "rep": BASE | {"rep"}, "models": BASE | {"data", "rep", "models"}}


def _project_imports(path: Path) -> set[str]:
    """The ghostnetv3 sub-packages/modules `path` imports (absolute or relative), anywhere in the file."""
    pkg = path.parent.relative_to(SRC.parent).parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(pkg[: len(pkg) - node.level + 1]) if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [f"{mod}.{a.name}" if mod == "ghostnetv3" else mod for a in node.names]
        else:
            continue
        out |= {n.split(".")[1] for n in names if n.startswith("ghostnetv3.")}
    return out


def test_models_rep_and_data_have_no_command_modules():
    for pkg in ("models", "rep", "data"):
        assert not (SRC / pkg / "cli.py").exists(), f"{pkg}/cli.py: commands live in ghostnetv3/commands/"


def test_lower_layers_import_only_lower_layers():
    for pkg, allowed in ALLOWED.items():
        for path in (SRC / pkg).glob("*.py"):
            above = _project_imports(path) - allowed
            assert not above, f"{path.relative_to(SRC)} imports {sorted(above)}"


def test_predict_imports_no_command_line_module():
    tree = ast.parse((SRC / "predict.py").read_text())
    mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.endswith(".cli") or m.startswith("ghostnetv3.commands") for m in mods), mods
