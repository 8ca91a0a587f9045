"""benchmarks/gpu_suite.py, the script a lent GPU runs, on the CPU path at tiny sizes: it must run end to
end and print the numbers it promises (a GPU session has minutes, not time to debug it)."""
import json
import subprocess
import sys

from tests.engine.engine_helpers import REPO, env


def test_gpu_suite_runs_on_the_cpu_and_prints_every_section():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_suite.py"), "--device", "cpu", "--quick"],
                       env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    ips = res["train_step_224"]["img_s"]
    assert set(ips) == {"ours_train", "timm_train", "ours_fused"} and min(ips.values()) > 0
    rec = res["fashion_mnist_recipe"]
    assert rec["train_img_s"] > 0 and rec["data_only_img_s"] > 0 and 0 < rec["data_share_of_step"]
    lat = res["latency"]
    assert lat["onnx_provider"] == "CPUExecutionProvider"
    assert all(lat[f"batch{b}_ms"][k] > 0 for b in (1, 32) for k in ("eager", "onnx"))
