"""Issue 25 item 15: recipes found outside the clone, `--help` after a recipe, --threads on every command,
float keys that must be finite and in range, --resume of a live run, timm names in `models`, the
detection summary; and issue 24: build_model takes our models under their timm names."""
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

from cli_helpers import REPO, cli, env
from ghostnetv3 import cli as top
from ghostnetv3.engine import config as C
from ghostnetv3.engine.config import TrainConfig, load_config
from ghostnetv3.engine.model_factory import build_model
from ghostnetv3.models.registry import TIMM_NAMES
from ghostnetv3.rep.conv import RepConv2d


def cli_in(cwd, *args, timeout: float = 300, **extra_env) -> subprocess.CompletedProcess:
    """`ghostnetv3 ...` run from `cwd` (not the clone), as a user elsewhere would."""
    return subprocess.run([sys.executable, "-m", "ghostnetv3.cli", *map(str, args)], cwd=cwd,
                          env=env(**extra_env), capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- (a) recipes by name

def test_recipe_by_name_is_found_outside_the_clone_working_dir_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = REPO / "recipes" / "fashion_mnist.yaml"
    for name in ("fashion_mnist", "fashion_mnist.yaml", "fashion-mnist", "recipes/fashion_mnist.yaml"):
        assert C.find_recipe(name).resolve() == shipped
    assert load_config("fashion_mnist").lr == 0.1  # the recipe's, not the default 0.05
    (tmp_path / "fashion_mnist.yaml").write_text("lr: 0.2\n")  # the working directory comes first
    assert load_config("fashion_mnist").lr == 0.2
    with pytest.raises(FileNotFoundError, match=r"recipe not found: nope \(.*shipped recipe: .*fashion_mnist"):
        C.find_recipe("nope")


def test_train_with_a_recipe_name_from_another_directory(tmp_path):
    r = cli_in(tmp_path, "train", "-c", "fashion_mnist", "--width", "0.1", "--train-subset", "64",
               "--val-subset", "32", "-b", "32", "--epochs", "1", "--channels-last", "false",
               "--experiment", "named")
    assert r.returncode == 0, r.stderr[-2000:]
    saved = (tmp_path / "runs" / "named" / "config.yaml").read_text()
    assert "lr: 0.1\n" in saved and "stem_stride: 1\n" in saved and "crop_mode: pad_crop\n" in saved
    assert "done: best top1 " in r.stdout


def test_packages_list_holds_every_package_under_src():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(REPO / "src").parts)
             for p in (REPO / "src" / "ghostnetv3").rglob("__init__.py")}
    assert found <= set(tool["packages"]), f"add {sorted(found - set(tool['packages']))} to pyproject.toml"
    assert tool["package-dir"]["ghostnetv3.recipes"] == "recipes"


def test_the_wheel_ships_the_recipes_and_the_installed_cli_finds_them(tmp_path):
    src = tmp_path / "clone"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("src", "recipes"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run([*pip, "wheel", "--no-build-isolation", "--no-deps", "-w", tmp_path / "dist", src],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("ghostnetv3-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        for recipe in (REPO / "recipes").glob("*.yaml"):  # byte for byte, under their own names
            assert z.read(f"ghostnetv3/recipes/{recipe.name}") == recipe.read_bytes()
    site = tmp_path / "site"
    r = subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    installed = dict(env(), PYTHONPATH=str(site))  # the installed package, not the clone's src/
    r = subprocess.run([sys.executable, "-c", "from ghostnetv3.engine.config import find_recipe; "
                        "print(find_recipe('fashion_mnist'))"], cwd=work, env=installed, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == site / "ghostnetv3" / "recipes" / "fashion_mnist.yaml"
    r = subprocess.run([sys.executable, "-m", "ghostnetv3.cli", "train", "-c", "fashion_mnist", "--help"], cwd=work,
                       env=installed, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(recipe: 'ghostnetv3_050')" in r.stdout


# --------------------------------------------------------------------------- (b) --help after a recipe

def _usage_flags(help_text: str) -> list[str]:
    usage = help_text.split("\n\n", 1)[0]
    return re.findall(r"\[(--[\w-]+)", usage)


@pytest.mark.parametrize("argv", [["train", "-c", "fashion_mnist"], ["detect", "train", "-c", "detect_fashion"],
                                  ["cache-teacher", "-c", "fashion_mnist"]])
def test_help_after_a_recipe_shows_each_flag_once_and_no_suppress(argv, tmp_path):
    r = cli_in(tmp_path, *argv, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "SUPPRESS" not in r.stdout
    flags = _usage_flags(r.stdout)
    assert flags and len(flags) == len(set(flags)), [f for f in flags if flags.count(f) > 1]
    assert not [f for f in flags if "_" in f]  # the --key_name spellings are accepted, not listed
    if argv[0] == "train":
        assert "--momentum X SGD momentum (recipe: 0.9)" in " ".join(r.stdout.split())


# --------------------------------------------------------------------------- (c) --threads everywhere

_THREAD_COMMANDS = [["train"], ["eval", "RUN"], ["export", "RUN", "-o", "m.onnx"], ["quantize", "RUN"],
                    ["predict", "RUN", "img.png"], ["cache-teacher"], ["bench", "ghostnetv3_050"],
                    ["detect", "train"], ["detect", "bench", "RUN"], ["ablate", "-c", "plan.yaml"]]


@pytest.mark.parametrize("argv", _THREAD_COMMANDS, ids=lambda a: " ".join(a[:2]))
@pytest.mark.parametrize("n", ["0", "-2"])
def test_threads_zero_or_negative_is_refused_in_one_line(argv, n, capsys):
    assert top.main([*argv, "--threads", n]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ghostnetv3 {argv[0]}: error: --threads {n}: give a positive number of threads")
    assert len(err.splitlines()) == 1


class _Stop(Exception):
    """Raised by the stand-in for a command's work: the threads were set before it."""


def _record(seen):
    def work(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise _Stop
    return work


@pytest.mark.parametrize("argv,target", [
    (["eval", "RUN", "--json"], "ghostnetv3.engine.evaluate.evaluate_checkpoint"),
    (["export", "RUN", "-o", "m.onnx"], "ghostnetv3.deploy.load.load_for_deploy"),
    (["quantize", "RUN"], "ghostnetv3.deploy.quantize.quantize"),
    (["predict", "RUN", "img.png"], "ghostnetv3.predict.predict"),
    (["cache-teacher", "--teacher", "resnet18"], "ghostnetv3.engine.datasets.load_datasets"),
], ids=lambda a: a[0] if isinstance(a, list) else "")
def test_threads_sets_torch_threads_before_the_work(argv, target, monkeypatch):
    seen = []
    monkeypatch.setattr(target, _record(seen))
    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    try:
        with pytest.raises(_Stop):
            top.main([*argv, "--threads", str(want)])
        assert seen == [want]
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- (d) float keys

@pytest.mark.parametrize("key,value,message", [
    ("lr", "nan", "lr: nan is not a finite number"),
    ("lr", "inf", "lr: inf is not a finite number"),
    ("lr", "-0.1", "lr: -0.1 is out of range; give a number >= 0"),
    ("momentum", "1.5", "momentum: 1.5 is out of range; give a number >= 0 and <= 1"),
    ("weight_decay", "-1e-4", "weight_decay: -0.0001 is out of range"),
    ("smoothing", "-0.1", "smoothing: -0.1 is out of range"),
    ("min_lr", "nan", "min_lr: nan is not a finite number"),
    ("warmup_lr", "-1", "warmup_lr: -1 is out of range"),
    ("kd_temperature", "0", "kd_temperature: 0 is out of range; give a number > 0"),
    ("mean", "0.5,nan,0.5", "mean: nan is not a finite number"),
])
def test_float_keys_must_be_finite_and_in_range_from_cli_and_yaml(key, value, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, **{key: value})  # the command line's strings
    recipe = tmp_path / "r.yaml"
    yaml_value = {"nan": ".nan", "inf": ".inf"}.get(value, value)
    recipe.write_text(f"{key}: [{yaml_value.replace('nan', '.nan')}]\n" if "," in value else f"{key}: {yaml_value}\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(recipe)  # YAML's numbers: the same rule


def test_lr_nan_on_the_command_line_is_one_line():
    r = cli("train", "--lr", "nan", "--epochs", "1")
    assert r.returncode == 1
    assert r.stderr.strip() == "ghostnetv3 train: error: lr: nan is not a finite number; give a number"


# --------------------------------------------------------------------------- (e) --resume of a live run

def test_resume_of_a_live_run_before_its_first_checkpoint_names_the_process(tmp_path):
    run = tmp_path / "live"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ghostnetv3.engine.rundir import lock_run_dir; "
                               f"lock_run_dir({str(run)!r}); print('locked', flush=True); time.sleep(120)"],
        env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = cli("train", "--resume", run)
        assert r.returncode == 1
        assert f"{run} is in use by process {holder.pid}" in r.stderr and "killed" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    r = cli("train", "--resume", run)  # the process is gone: the lock with it
    assert r.returncode == 1 and "was the run killed before its first checkpoint?" in r.stderr


# --------------------------------------------------------------------------- (f) models

def test_models_lists_the_timm_names(capsys):
    assert top.main(["models"]) == 0
    out = capsys.readouterr().out
    for ours, timm_name in TIMM_NAMES.items():
        assert re.search(rf"^  {ours} +{timm_name} ", out, re.M), ours


# --------------------------------------------------------------------------- (g) detect train's summary

def test_detect_train_ends_with_the_summary(tmp_path):
    r = cli("detect", "train", "--data", "fashion-detect", "--img-size", "64", "--width", "0.25",
            "--train-subset", "16", "--val-subset", "8", "-b", "8", "--epochs", "1", "--warmup-epochs", "0",
            "--opt", "adamw", "--lr", "2e-3", "--smoothing", "0", "--channels-last", "false",
            "--output", tmp_path, "--experiment", "det")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "det"
    lines = r.stdout.strip().splitlines()
    assert re.match(r"done: best mAP@\[\.5:\.95\] \d+\.\d\d at epoch 1 \((EMA|raw) weights, fused\)", lines[-4])
    assert lines[-3].startswith(f"files: {run}/ {{best.pt, last.pt")
    assert lines[-2] == (f"next: ghostnetv3 detect eval {run}  |  ghostnetv3 detect export {run} -o det.onnx  |  "
                         f"ghostnetv3 detect bench {run}")
    assert json.loads(lines[-1])["run_dir"] == str(run)


# --------------------------------------------------------------------------- issue 24: timm names in build_model

def test_build_model_takes_our_models_under_their_timm_names():
    m = build_model(TrainConfig(model="gnv3_050", num_conv_branches=2, rep_init="reference", width=0.25), 4, 1)
    sites = [s for s in m.modules() if isinstance(s, RepConv2d)]
    assert sites and all(s.rep_init == "reference" for s in sites)
    assert max(s.num_conv_branches for s in sites) == 2
    scaled = build_model(TrainConfig(model="gnv3_050", width=0.25), 4, 1)
    assert all(float(s.bn_weight.detach().max()) < 1.0 for s in scaled.modules() if isinstance(s, RepConv2d))
    with pytest.raises(ValueError, match="apply to ghostnetv3_"):
        build_model(TrainConfig(model="resnet18", num_conv_branches=2), 4, 1)
