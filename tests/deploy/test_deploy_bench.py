import json

from ghostnetv3.cli import main
from ghostnetv3.deploy.backends import openvino as openvino_backend
from ghostnetv3.deploy.bench import BACKEND_GROUPS, BACKENDS, time_blocks

from deploy_helpers import IMG, MODEL


def test_bench_prints_table_and_json(tmp_path, capsys):
    rc = main(["bench", MODEL, "--input-size", "3", str(IMG), str(IMG), "--batch-sizes", "1,2",
               "--backends", "torch,onnxruntime", "--threads", "1", "--repeats", "2", "--warmup", "1",
               "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "median ms" in out
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["model"] == MODEL and r["input_size"] == [3, IMG, IMG] and r["machine"]["threads"] == 1
    assert r["params"]["fused"] < r["params"]["train_form"]
    assert r["macs"]["fused"] < r["macs"]["train_form"]
    rows = {(x["backend"], x["batch_size"]) for x in r["latency"]}
    assert rows == {(b, s) for g in ("torch", "onnxruntime") for b in BACKEND_GROUPS[g] for s in (1, 2)}
    for x in r["latency"]:
        assert 0 < x["median_ms"] <= x["p90_ms"] and x["images_per_s"] > 0
    assert max(r["max_diff_vs_torch"].values()) < 1e-4
    assert "allow_spinning=0" in r["timing"]


def test_bench_every_backend_writes_report(tmp_path, capsys):
    # timm's tiny test model: every runtime's converter in seconds
    rc = main(["bench", "test_efficientnet", "--input-size", "1", "32", "32", "--batch-sizes", "1",
               "--threads", "1", "--repeats", "2", "--warmup", "1", "--rounds", "2", "--report", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((tmp_path / "bench.json").read_text())
    assert {x["backend"] for x in r["latency"]} == set(BACKENDS) and r["skipped"] == {}
    assert max(r["max_diff_vs_torch"].values()) < 1e-4  # every fp32 file matched PyTorch
    md = (tmp_path / "latency.md").read_text()
    assert all(f"| {b} | 1 |" in md for b in BACKENDS) and "load average" in md
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_int8_conversion_the_converter_refuses_is_reported_not_fatal(tmp_path, capsys, monkeypatch):
    def refuse(*a, **kw):  # as LiteRT's converter refused GhostNetV3-1.0 at 224 px
        raise ValueError("Failed to run converter passes: 'tfl.pad' op quantization parameters violate ...")

    monkeypatch.setattr(openvino_backend, "export_int8", refuse)
    rc = main(["bench", "test_efficientnet", "--input-size", "1", "32", "32", "--batch-sizes", "1",
               "--backends", "torch,openvino", "--threads", "1", "--repeats", "2", "--warmup", "1", "--rounds", "1",
               "--report", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    r = json.loads((tmp_path / "bench.json").read_text())
    assert {x["backend"] for x in r["latency"]} == {"torch_eager_fp32", "openvino_fp32"}
    assert list(r["failed"]) == ["openvino_int8@1"] and "tfl.pad" in r["failed"]["openvino_int8@1"]
    assert "failed openvino_int8@1 (converter refused, not timed)" in (tmp_path / "latency.md").read_text()


def test_time_blocks_runs_each_function_alone_in_rounds():
    calls = []
    times = time_blocks({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                        repeats=4, warmup=1, rounds=2)
    assert [len(t) for t in times.values()] == [4, 4]
    # per round: a's warm-up + 2 timed calls, then b's: never a, b, a, b
    assert "".join(calls) == "aaabbbaaabbb"
