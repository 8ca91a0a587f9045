"""`ghostnetv3 predict` and `ghostnetv3 models`."""
import json

from cli_helpers import cli


def test_predict_run_and_exported_onnx_agree(tiny_run, images, tmp_path):
    run_dir, _ = tiny_run
    paths, _labels = images
    r = cli("predict", run_dir, *paths, "--topk", "3", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    assert [i["image"] for i in res["images"]] == [str(p) for p in paths] and res["input"] == [1, 32, 32]
    for item in res["images"]:
        probs = [t["prob"] for t in item["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["class"] == classes[t["index"]] for t in item["top"])  # names from the run
    assert "of best.pt" in res["weights"]
    onnx = tmp_path / "m.onnx"
    assert cli("export", run_dir, "-o", onnx).returncode == 0
    r = cli("predict", onnx, *paths, "--topk", "3", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    from_onnx = json.loads(r.stdout)
    for a, b in zip(res["images"], from_onnx["images"]):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]  # names travel in the file
        assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"])) < 1e-5
    # the table a person reads
    r = cli("predict", run_dir, paths[0], "--topk", "2")
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and lines[1] == str(paths[0]) and len(lines) == 4 and lines[2].strip().endswith(
        res["images"][0]["top"][0]["class"])


def test_predict_bad_image_is_one_line(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = cli("predict", run_dir, bad)
    assert r.returncode == 1 and "cannot read image" in r.stderr and "Traceback" not in r.stderr


def test_models_lists_ours_and_points_to_timm():
    r = cli("models")
    assert r.returncode == 0
    assert "ghostnetv3_100" in r.stdout and "ghostnetv2_050" in r.stdout and "any timm name" in r.stdout
    r = cli("models", "--timm", "mobilenetv2_1*")
    assert r.returncode == 0 and "mobilenetv2_100" in r.stdout.split()
