"""deploy/files (what one export writes and how it reaches its place), deploy/openvino_thread (the
signal-blocking thread) and deploy/pt2e.calibration_chunks."""
from __future__ import annotations

import signal
import threading

import numpy as np

from ghostnetv3.deploy.files import (commit_files, discard_files, file_size, output_files, read_sidecar,
                                     size_from_shape, temporary_name, write_sidecar)
from ghostnetv3.deploy.openvino_thread import on_openvino_thread
from ghostnetv3.deploy.pt2e import calibration_chunks


def _write_export(path, fmt):
    """Stand-in files of one export, sizes 3 (model), 5 (.bin) and the sidecar."""
    files = output_files(path, fmt)
    files[0].write_bytes(b"xml")
    if fmt == "openvino":
        files[1].write_bytes(b"12345")
    write_sidecar(path, {"format": fmt, "input_shape": [2, 1, 8, 8]})
    return files


def test_an_openvino_export_is_three_files_moved_together(tmp_path):
    final = tmp_path / "m.xml"
    assert [p.name for p in output_files(final, "openvino")] == ["m.xml", "m.bin", "m.xml.json"]
    assert [p.name for p in output_files(tmp_path / "m.onnx", "onnx")] == ["m.onnx", "m.onnx.json"]
    tmp = temporary_name(final)
    assert tmp.parent == final.parent and tmp.name.startswith(".tmp-") and tmp.name.endswith("-m.xml")
    _write_export(tmp, "openvino")
    assert file_size(tmp, "openvino") == 8  # .xml + .bin, not the sidecar
    commit_files(tmp, final, "openvino")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml", "m.xml.json"]
    assert read_sidecar(final)["input_shape"] == [2, 1, 8, 8] and read_sidecar(tmp_path / "none.pte") == {}


def test_discarding_a_failed_export_removes_what_it_wrote(tmp_path):
    tmp = temporary_name(tmp_path / "m.xml")
    _write_export(tmp, "openvino")
    (tmp_path / "keep.txt").write_text("not ours")
    discard_files(tmp, "openvino")
    discard_files(tmp, "openvino")  # twice: nothing left to remove is no error
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_size_from_shape_fills_only_what_is_unset():
    meta = {"input_shape": [None, 3, 32, 32]}
    size_from_shape(meta)
    assert (meta["in_chans"], meta["img_size"]) == (3, 32)
    meta = {"input_shape": [1, 1, 16, 24], "in_chans": 3}
    size_from_shape(meta)
    assert meta["in_chans"] == 3 and "img_size" not in meta  # non-square: no single size


def test_openvino_runs_on_one_thread_that_blocks_every_signal():
    def where():
        return threading.current_thread().name, signal.pthread_sigmask(signal.SIG_BLOCK, [])
    name, blocked = on_openvino_thread(where)
    assert name.startswith("openvino") and {signal.SIGCHLD, signal.SIGINT, signal.SIGTERM} <= blocked
    assert on_openvino_thread(where)[0] == name  # the same thread every time
    assert on_openvino_thread(on_openvino_thread, where)[0] == name  # nested: runs in place


def test_calibration_chunks_have_the_exported_batch_size():
    batches = [np.arange(5 * 2).reshape(5, 2), np.arange(3 * 2).reshape(3, 2)]
    chunks = list(calibration_chunks(batches, 2))
    assert [len(c) for c in chunks] == [2, 2, 2]  # 5 -> 2 + 2 (a ragged tail dropped), 3 -> 2
    assert all(c.flags["C_CONTIGUOUS"] for c in chunks)
