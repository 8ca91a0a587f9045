import json

from ghostnetv3.cli import main
from ghostnetv3.deploy.bench import BACKENDS

from deploy_helpers import IMG, MODEL


def test_bench_prints_table_and_json(tmp_path, capsys):
    rc = main(["bench", MODEL, "--input-size", "3", str(IMG), str(IMG), "--batch-sizes", "1,2",
               "--threads", "1", "--repeats", "2", "--warmup", "1", "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "median ms" in out
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["model"] == MODEL and r["input_size"] == [3, IMG, IMG] and r["machine"]["threads"] == 1
    assert r["params"]["fused"] < r["params"]["train_form"]
    assert r["macs"]["fused"] < r["macs"]["train_form"]
    rows = {(x["backend"], x["batch_size"]) for x in r["latency"]}
    assert rows == {(b, s) for b in BACKENDS for s in (1, 2)}
    for x in r["latency"]:
        assert 0 < x["median_ms"] <= x["p90_ms"] and x["images_per_s"] > 0
    assert r["onnx_max_diff"] < 1e-4
