"""Measure the package's shape (issue 24): long functions, function-local imports, import circles,
upward imports and cross-module `_private` imports. Prints one JSON object; `--strict` exits 1 when a
rule is broken (tests/test_architecture.py runs it).

    python scripts/check_layers.py            # the numbers
    python scripts/check_layers.py --strict   # and fail on a broken rule
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "ghostnetv3"
NAME = "ghostnetv3"

MAX_LINES = 100          # any function in src/
MAX_ENGINE_LINES = 80    # any function in engine/
# Lower layers first; a module may import from its own layer or any lower one.
LAYERS = [
    {"errors", "paths", "safeload"},
    {"data", "rep"},
    {"models"},
    {"engine"},
    {"distill", "deploy", "detect", "predict"},
    {"ablate"},
    {"cli"},
]


def module_name(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


PACKAGES: set[str] = {NAME}  # filled by scan(): modules that are a package's __init__


def is_cli(mod: str) -> bool:
    """CLI modules (lazy sub-command imports allowed) and package __init__ files (lazy attributes)."""
    last = mod.rsplit(".", 1)[-1]
    return last == "cli" or mod in PACKAGES


def layer_of(mod: str) -> int:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if len(parts) > 2 and parts[2] == "cli":
        return len(LAYERS) - 1   # a package's cli module sits with the CLI
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return len(LAYERS) - 1


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def known(target: str, modules: set[str]) -> str | None:
    """The project module `target` names (a module, or a package whose attribute it takes)."""
    while target:
        if target in modules:
            return target
        target = target.rsplit(".", 1)[0] if "." in target else ""
    return None


def scan(pkg: Path = PKG) -> dict:
    """Every broken rule in the package at `pkg` (a directory named ghostnetv3)."""
    files = sorted(pkg.rglob("*.py"))
    modules = {module_name(f, pkg): f for f in files}
    names = set(modules)
    PACKAGES.update(module_name(f, pkg) for f in files if f.name == "__init__.py")
    long_funcs, local_project, lazy_unmarked, private, upward = [], [], [], [], []
    graph: dict[str, set[str]] = {m: set() for m in names}
    for mod, path in modules.items():
        src = path.read_text()
        lines = src.splitlines()
        tree = ast.parse(src)
        is_pkg = path.name == "__init__.py"
        limit = MAX_ENGINE_LINES if mod.startswith(f"{NAME}.engine.") else MAX_LINES
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    long_funcs.append(f"{mod}:{node.name} {n} lines (limit {limit})")
        # imports, with whether each sits inside a function
        parents: dict[ast.AST, ast.AST] = {}
        for p in ast.walk(tree):
            for c in ast.iter_child_nodes(p):
                parents[c] = p

        def in_function(n: ast.AST) -> bool:
            while n in parents:
                n = parents[n]
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    return True
            return False

        def type_checking(n: ast.AST) -> bool:
            while n in parents:
                n = parents[n]
                if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                    return True
            return False

        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            where = f"{mod}:{node.lineno}"
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            else:
                base = resolve(mod, is_pkg, node)
                targets = [(f"{base}.{a.name}" if known(f"{base}.{a.name}", names) else base, a.name)
                           for a in node.names]
            local = in_function(node)
            for target, attr in targets:
                dep = known(target, names) if target.split(".")[0] == NAME else None
                if dep is None:
                    if local and "# lazy:" not in lines[node.lineno - 1]:
                        lazy_unmarked.append(f"{where} {target}")
                    continue
                if local and not is_cli(mod):
                    local_project.append(f"{where} {dep}")
                if attr and attr.startswith("_") and not attr.startswith("__") and dep != mod:
                    private.append(f"{where} {dep}.{attr}")
                if dep == mod or type_checking(node):
                    continue
                graph[mod].add(dep)   # a function-local import is a dependency all the same
                if not is_cli(mod) and layer_of(dep) > layer_of(mod):
                    upward.append(f"{where} {mod} -> {dep}")
    return {
        "long_functions": long_funcs,
        "local_project_imports": local_project,
        "lazy_imports_without_reason": lazy_unmarked,
        "private_imports": private,
        "upward_imports": upward,
        "import_cycles": cycles(graph),
    }


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Strongly connected components of more than one module (Tarjan), package edges folded:
    importing `a.b` runs `a/__init__` first, which is a real edge only when it imports back."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[str] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(" <-> ".join(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strict", action="store_true", help="exit 1 when any rule is broken")
    args = ap.parse_args(argv)
    found = scan()
    summary = {k: len(v) for k, v in found.items()}
    print(json.dumps({"counts": summary, **found}, indent=1))
    return 1 if args.strict and any(summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
