"""`ghostnetv3 predict` and `ghostnetv3 models`."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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


# ---- issue 25: mixed channels, config-less checkpoints, exported files, folders and globs, bad files ----
def _rgb(seed: int, h: int = 40, w: int = 36) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), np.uint8)


def test_predict_reads_gray_and_colour_images_as_the_model_channels(tiny_run, tmp_path):
    """Item 6: a colour file next to gray ones, for a gray model, is read as its luma (as training
    reads a set); a folder is its images, recursively."""
    run_dir, _ = tiny_run
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(0)).save(d / "colour.png")
    Image.fromarray(_rgb(0)).convert("L").save(d / "sub" / "luma.png")
    Image.fromarray(_rgb(1)[..., 0]).save(d / "gray.png")
    (d / "notes.txt").write_text("not an image")
    r = cli("predict", run_dir, d / "colour.png", d / "gray.png", "--topk", "1")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]  # was: a torch.stack traceback
    assert r.stdout.splitlines()[1] == str(d / "colour.png") and r.stdout.splitlines()[3] == str(d / "gray.png")
    r = cli("predict", run_dir, d, "--topk", "10", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    want = [d / "colour.png", d / "gray.png", d / "sub" / "luma.png"]  # sorted, the .txt left out
    assert [i["image"] for i in res["images"]] == [str(p) for p in want]
    probs = {Path(i["image"]).name: {t["index"]: t["prob"] for t in i["top"]} for i in res["images"]}
    assert max(abs(probs["colour.png"][k] - probs["luma.png"][k]) for k in range(10)) < 1e-6


def test_predict_config_less_checkpoint_takes_model_and_size_flags(images, tmp_path):
    """Item 7: the advice 'pass --model NAME' now works; the scores are the model's own."""
    from ghostnetv3.models import create_model
    from ghostnetv3.predict import load_images

    paths, _ = images
    torch.manual_seed(0)
    model = create_model("ghostnetv3_050", num_classes=3, in_chans=1).eval()
    ckpt = tmp_path / "plain.pt"
    torch.save(model.state_dict(), ckpt)
    r = cli("predict", ckpt, paths[0])
    assert r.returncode == 1 and "pass --model NAME" in r.stderr and "Traceback" not in r.stderr
    r = cli("predict", ckpt, *paths, "--model", "ghostnetv3_050", "--img-size", "32", "--topk", "3", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["model"] == "ghostnetv3_050" and res["input"] == [1, 32, 32]
    with torch.no_grad():
        want = model(load_images(paths, {"img_size": 32, "in_chans": 1})).softmax(dim=1)
    for item, row in zip(res["images"], want):
        assert {t["class"] for t in item["top"]} == {"0", "1", "2"}
        assert max(abs(t["prob"] - float(row[t["index"]])) for t in item["top"]) < 1e-5


def test_predict_exported_tflite_on_a_glob_scores_as_the_run(tiny_run, images, tmp_path):
    """Item 7: an on-device file (fixed batch 2, three images: the last batch padded), fed as its
    input contract says, in its own runtime, without the runtime's log lines; a quoted glob."""
    run_dir, _ = tiny_run
    paths, _ = images
    tfl = tmp_path / "m.tflite"
    r = cli("export", run_dir, "--format", "tflite", "--batch-size", "2", "-o", tfl)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = json.loads(cli("predict", run_dir, *paths, "--topk", "3", "--json").stdout)
    r = cli("predict", tfl, str(paths[0].parent / "img*.png"), "--topk", "3", "--json")
    assert r.returncode == 0 and "XNNPACK" not in r.stderr, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["input"] == [1, 32, 32] and "exported tflite file" in got["weights"]
    assert [i["image"] for i in got["images"]] == [str(p) for p in paths]
    for a, b in zip(ref["images"], got["images"]):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"])) < 1e-4
    r = cli("predict", tfl, paths[0], "--model", "ghostnetv3_050")
    assert r.returncode == 1 and "drop --model" in r.stderr and "Traceback" not in r.stderr
    r = cli("predict", tfl, str(tmp_path / "*.jpeg"))
    assert r.returncode == 1 and "no image matches" in r.stderr


def test_predict_refuses_a_nan_float_tiff_naming_it_or_skips_it(tiny_run, images, tmp_path):
    """Item 15: NaN pixels are not read as black; --on-bad-image skip scores the rest and lists it."""
    run_dir, _ = tiny_run
    paths, _ = images
    a = np.full((8, 8), 0.5, np.float32)
    a[1, 1] = np.nan
    nan = tmp_path / "nan.tif"
    Image.fromarray(a, "F").save(nan)
    r = cli("predict", run_dir, nan, paths[0])
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"cannot read image {nan}" in r.stderr and "NaN" in r.stderr and "--on-bad-image skip" in r.stderr
    r = cli("predict", run_dir, nan, paths[0], "--on-bad-image", "skip", "--topk", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[1] == str(paths[0]) and lines[-1].startswith(f"skipped {nan} (ValueError: 1 of 64 pixels are NaN")


def test_predict_names_a_latin1_file_on_a_strict_utf8_terminal(tiny_run, images, tmp_path):
    """Item 8: a file name that is not UTF-8 is read and printed (escaped), not a codec error."""
    run_dir, _ = tiny_run
    paths, _ = images
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/r\xf6ntgen.png")
    shutil.copyfile(paths[0], odd)
    r = cli("predict", run_dir, odd, "--topk", "1", PYTHONIOENCODING="utf-8:strict")
    assert r.returncode == 0 and "codec" not in r.stderr, r.stderr[-2000:]
    assert r.stdout.splitlines()[1] == f"{tmp_path}/r\\xf6ntgen.png"


def test_predict_feeds_images_with_the_runs_interpolation(images):
    """Issue 24 item 3: predict built its transform without `interpolation` (a bicubic run's images were
    resized bilinearly); it now takes the run's whole input contract (data.InputSpec)."""
    from timm.data import create_transform

    from ghostnetv3.data.datasets import decode_image, short_side_center_crop, to_chw
    from ghostnetv3.predict import load_images

    paths, _ = images
    cfg = {"img_size": 32, "in_chans": 1, "interpolation": "bicubic", "eval_crop_pct": 0.875}
    got = load_images(paths, cfg)
    tf = create_transform(input_size=(1, 32, 32), is_training=False, interpolation="bicubic", crop_pct=0.875,
                          mean=(0.449,), std=(0.226,))
    loaded = [short_side_center_crop(to_chw(decode_image(p), 1), 32) for p in paths]  # predict's load-time resize
    want = torch.stack([tf(Image.fromarray(x[0].numpy(), "L")) for x in loaded])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    bilinear = load_images(paths, {**cfg, "interpolation": "bilinear"})
    assert (got - bilinear).abs().max() > 1e-2
