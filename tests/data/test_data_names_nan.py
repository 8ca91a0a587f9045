"""Issue 25 items 8 and 15 on the data side: file and folder names that are not UTF-8 are read (by
their bytes) and named in text that prints anywhere; a float TIFF with NaN pixels is refused
naming the file (or skipped with --on-bad-image skip), never read as black."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ghostnetv3.data import load_dataset
from ghostnetv3.data.datasets import shown
from ghostnetv3.data.stream import PerSampleLoader, SeededTransformDataset, open_stream_set

REPO = Path(__file__).resolve().parents[2]
LATIN1_CLASS = b"caf\xe9"  # 'café' as Latin-1: not valid UTF-8
LATIN1_FILE = b"r\xf6ntgen.png"
NAN_FILE = b"n\xe4n.tif"


def _nan_tiff(path) -> None:
    a = np.full((8, 8), 0.5, np.float32)
    a[2, 3] = np.nan
    Image.fromarray(a, "F").save(path)


def _latin1_folder(root: Path, nan: bool = False, size: int = 8) -> Path:
    """Two classes, one a Latin-1 folder holding a Latin-1 file name; `nan`: plus a NaN float TIFF."""
    base = os.fsencode(root)
    for cls in (b"plain", LATIN1_CLASS):
        os.makedirs(base + b"/" + cls)
        for i in range(4):
            name = LATIN1_FILE if (cls == LATIN1_CLASS and i == 0) else b"%d.png" % i
            pixels = np.full((size, size), 40 * i + (100 if cls == LATIN1_CLASS else 0), np.uint8)
            Image.fromarray(pixels).save(os.fsdecode(base + b"/" + cls + b"/" + name))
    if nan:
        _nan_tiff(os.fsdecode(base + b"/" + LATIN1_CLASS + b"/" + NAN_FILE))
    return root


def test_shown_escapes_bytes_that_are_not_utf8():
    assert shown(os.fsdecode(b"/d/caf\xe9/x.png")) == "/d/caf\\xe9/x.png"
    assert shown(b"caf\xe9") == "caf\\xe9" and shown("café.png") == "café.png"
    shown(os.fsdecode(b"\xff\xfe")).encode("utf-8")  # always printable on a strict UTF-8 stdout


def test_stream_lists_and_reads_names_that_are_not_utf8(tmp_path):
    root = _latin1_folder(tmp_path / "d")
    st = open_stream_set(str(root), "all")  # was: UnicodeEncodeError with no path
    names = [st.file_name(i) for i in range(len(st))]
    assert f"{tmp_path}/d/caf\\xe9/r\\xf6ntgen.png" in names and st.classes == ["caf\\xe9", "plain"]
    for n in names + st.classes:
        n.encode("utf-8")  # printable where stdout is strict UTF-8
    mem = load_dataset(str(root), "all")
    assert mem.classes == st.classes
    streamed = torch.stack([torch.from_numpy(np.array(st.read(i)[0]))[None] for i in range(len(st))])
    assert torch.equal(streamed, mem.images) and torch.equal(st.labels, mem.labels)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_float_tiff_with_nan_is_refused_naming_it_or_skipped(tmp_path, mode):
    root = _latin1_folder(tmp_path / "d", nan=True)
    where = f"{tmp_path}/d/caf\\xe9/n\\xe4n.tif"
    if mode == "memory":
        with pytest.raises(ValueError, match="NaN") as e:
            load_dataset(str(root), "all")
        assert where in str(e.value) and "--on-bad-image skip" in str(e.value)
        ds = load_dataset(str(root), "all", on_bad_image="skip")
        assert len(ds) == 8 and ds.skipped == [where]
        return
    st = open_stream_set(str(root), "all")
    data = SeededTransformDataset(st.read, None, seed=0, in_chans=1, name=st.file_name)
    with pytest.raises(ValueError, match="NaN") as e:
        list(PerSampleLoader(data, len(st), 3, shuffle=False, drop_last=False, verbose=False))
    assert where in str(e.value)
    loader = PerSampleLoader(data, len(st), 3, shuffle=False, drop_last=False, on_bad_image="skip", verbose=False)
    assert sum(b.images.shape[0] for b in loader) == 8 and len(loader.skipped) == 1 and where in loader.skipped[0]


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_train_on_a_latin1_folder_names_and_skips_files_on_a_strict_utf8_terminal(tmp_path, mode):
    """The command a user runs, with stdout encoded as on a UTF-8 desktop (strict: surrogates fail)."""
    root = _latin1_folder(tmp_path / "d", nan=True, size=32)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8:strict",
               PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, "-m", "ghostnetv3.cli", "train", "--data", str(root), "--data-mode", mode,
            "--model", "ghostnetv3_050", "--width", "0.1", "--img-size", "32", "-b", "4", "-j", "0",
            "--epochs", "1", "--warmup-epochs", "0", "--val-fraction", "0.5", "--output", str(tmp_path / "runs")]
    where = f"{tmp_path}/d/caf\\xe9/n\\xe4n.tif"
    r = subprocess.run(args + ["--experiment", "fail"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"cannot decode image {where}" in r.stderr and "NaN" in r.stderr and "--on-bad-image skip" in r.stderr
    r = subprocess.run(args + ["--experiment", "skip", "--on-bad-image", "skip"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    said = r.stdout + r.stderr
    assert (f"skipped unreadable image {where}" in said) if mode == "stream" else ("1 unreadable skipped" in said)
    assert "done: best top1" in r.stdout
