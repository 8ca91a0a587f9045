"""deploy/backends (one file per format, one dispatch table), deploy/runner (the one batch runner)
and deploy/extras (which pip extra a missing package needs, in one line)."""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pytest
import torch

import ghostnetv3.deploy as deploy
from ghostnetv3.cli import build_parser
from ghostnetv3.deploy import bench
from ghostnetv3.deploy.backends import (BACKENDS, EDGE_FORMATS, FORMATS, INT8_FORMATS, backend_for,
                                        backend_of_file)
from ghostnetv3.deploy.extras import MissingExtraError, extra_of, install_hint, missing, require
from ghostnetv3.deploy.prepare import to_deploy_form
from ghostnetv3.deploy.runner import fixed_batch, open_runner

from deploy_helpers import IMG, tiny_model

SIZE = (3, IMG, IMG)


def _format_choices(command: str) -> set[str]:
    """The --format choices of `ghostnetv3 COMMAND`."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flag = next(a for a in subparsers.choices[command]._actions if "--format" in a.option_strings)
    return set(flag.choices)


def test_the_table_covers_every_format_the_cli_accepts():
    assert _format_choices("export") == set(BACKENDS) == set(FORMATS)
    for fmt, backend in BACKENDS.items():
        assert backend.FORMAT == fmt
        assert all(callable(getattr(backend, f)) for f in ("export", "load_runner", "read_metadata"))
        assert isinstance(backend.PACKAGES, tuple) and backend.SUFFIX.startswith(".")
    # every format `quantize` accepts has an INT8 path: onnxruntime's from the file, the rest from PyTorch
    quantizable = _format_choices("quantize")
    assert quantizable == {"onnx", *INT8_FORMATS} and set(INT8_FORMATS) == set(EDGE_FORMATS)
    assert callable(BACKENDS["onnx"].quantize_onnx) and not hasattr(BACKENDS["torchscript"], "export_int8")
    # bench's groups run these formats
    assert {f for f in bench.GROUP_FORMAT.values() if f} == {"onnx", *EDGE_FORMATS}
    assert set(bench.GROUP_FORMAT) == set(bench.BACKEND_GROUPS)


def test_unknown_format_is_one_line_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown format 'coreml': use one of onnx, torchscript, executorch, "
                                         r"tflite, openvino$"):
        backend_for("coreml")


@pytest.mark.parametrize("name,fmt", [("m.onnx", "onnx"), ("m.pt", "torchscript"), ("m.ts", "torchscript"),
                                      ("m.pte", "executorch"), ("m.tflite", "tflite"), ("m.xml", "openvino")])
def test_a_file_is_read_by_the_backend_of_its_suffix(name, fmt):
    assert backend_of_file(name) is BACKENDS[fmt]


@pytest.fixture(scope="module")
def fused():
    return to_deploy_form(tiny_model().eval(), log=lambda m: None)[0]


@pytest.mark.parametrize("fmt,options", [("onnx", {"dynamic_batch": True}), ("onnx", {"dynamic_batch": False}),
                                         ("torchscript", {})])
def test_the_batch_runner_matches_torch(fused, tmp_path, fmt, options):
    path = backend_for(fmt).export(fused, tmp_path / f"m{BACKENDS[fmt].SUFFIX}", SIZE, **options)
    x = torch.randn(5, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = fused(x).numpy()
    out = open_runner(path, fmt, threads=1)(x.numpy())  # a static-batch graph (batch 1) gets 5 chunks
    assert out.shape == ref.shape == (5, 10)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_the_batch_runner_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file: .*nothing.onnx"):
        open_runner(tmp_path / "nothing.onnx", "onnx")


def test_fixed_batch_feeds_chunks_of_its_size_and_drops_the_padding():
    seen = []

    def run(x):  # a runtime that takes exactly 4 images
        assert len(x) == 4
        seen.append(x.copy())
        return x.reshape(4, -1).sum(1, keepdims=True)
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3) + 1
    out = fixed_batch(run, 4)(x)
    np.testing.assert_array_equal(out, x.sum(1, keepdims=True))
    assert len(seen) == 3 and (seen[-1][2:] == 0).all()  # 4 + 4 + 2 real images and 2 zeros
    seen.clear()
    assert fixed_batch(run, 4)(x[:4]).shape == (4, 1) and len(seen) == 1
    assert fixed_batch(run, None) is run  # any batch: the runtime's own function


@pytest.mark.parametrize("package,extra", [("openvino", "edge"), ("litert_torch", "edge"), ("onnxruntime", "deploy")])
def test_missing_package_is_one_line_naming_the_pip_extra(monkeypatch, package, extra):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    with pytest.raises(MissingExtraError) as e:
        require(package, "Running it")
    assert str(e.value) == f"Running it needs the '{package}' package (missing): pip install ghostnetv3[{extra}]"
    assert missing([package, "numpy"]) == [package] and extra_of(package) == extra
    assert install_hint([package]) == f"pip install ghostnetv3[{extra}]"


def test_a_missing_module_of_no_extra_keeps_its_traceback():
    with pytest.raises(ModuleNotFoundError) as e:
        require("no_such_module_xyz", "Something")
    assert not isinstance(e.value, MissingExtraError)


def test_bench_names_the_extra_of_a_missing_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    groups, skipped = bench.select_backends("all")
    assert "openvino" not in groups and skipped["openvino"] == "not installed (nncf): pip install ghostnetv3[edge]"
    with pytest.raises(MissingExtraError, match=r"^backend openvino needs nncf: pip install ghostnetv3\[edge\]$"):
        bench.select_backends("openvino")


def test_every_lazy_name_of_the_deploy_package_resolves():
    # `count_params_macs` pointed at a deploy/count.py that does not exist
    assert all(getattr(deploy, name) is not None for name in deploy.__all__)
