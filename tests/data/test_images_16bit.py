"""Issue 15 items 4, 10 and 12 on the data side: 16-bit images decoded by bit depth, one odd
file's channels not deciding a whole set, and bounded memory for very elongated images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ghostnetv3.data import load_dataset
from ghostnetv3.data import datasets as D

VALUES = np.array([[0, 255, 256, 257], [32896, 65535, 65280, 1000]], dtype=np.uint16)


def _folder(tmp_path, files: dict[str, list[Image.Image]]):
    for cls, images in files.items():
        (tmp_path / cls).mkdir(parents=True)
        for i, im in enumerate(images):
            im.save(tmp_path / cls / f"{i}.{'tif' if im.mode.startswith('I;16') and i % 2 else 'png'}")
    return str(tmp_path)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_images_are_scaled_by_bit_depth_not_by_their_own_max(tmp_path, ext):
    dark = np.full((2, 4), 255, dtype=np.uint16)  # a very dark 16-bit image: max 255 of 65535
    for name, a in (("dark", dark), ("mixed", VALUES)):
        Image.fromarray(a).save(tmp_path / f"{name}.{ext}")
    with Image.open(tmp_path / f"dark.{ext}") as im:
        assert im.mode.startswith("I")
        assert D.to_uint8(im).max() == 1  # 255/65535 of full scale, not white
    with Image.open(tmp_path / f"mixed.{ext}") as im:
        got = D.to_uint8(im)
    assert got.tolist() == np.round(VALUES / 257.0).astype(np.uint8).tolist()
    assert got[0, 2] <= got[0, 3]  # 256 is no longer black next to 257


def test_12bit_tiff_uses_its_bits_per_sample(tmp_path):
    im = Image.fromarray(np.array([[0, 2048, 4095]], dtype=np.int32), "I")
    im.save(tmp_path / "x.tif", tiffinfo={258: 12})
    with Image.open(tmp_path / "x.tif") as back:
        bits = D._bit_depth(back)
        got = D.to_uint8(back)
    if bits == 12:
        assert got.tolist() == [[0, 128, 255]]
    else:  # Pillow wrote 32-bit samples: scaled by 32 bits, still never by the image's max
        assert bits == 32 and got.tolist() == [[0, 0, 0]]


def test_one_rgba_or_cmyk_file_does_not_turn_a_gray_set_into_color(tmp_path, capsys):
    g = np.random.default_rng(0)
    gray = [Image.fromarray(g.integers(0, 255, (8, 8), dtype=np.uint8), "L") for _ in range(3)]
    rgba = Image.fromarray(g.integers(0, 255, (8, 8, 4), dtype=np.uint8), "RGBA")
    cmyk = Image.fromarray(g.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB").convert("CMYK")
    cmyk_path = tmp_path / "b" / "cmyk.jpg"
    root = _folder(tmp_path, {"a": gray + [rgba], "b": gray})
    cmyk.save(cmyk_path)
    ds = load_dataset(root, "all")
    assert ds.images.shape[1] == 1
    out = capsys.readouterr().out
    assert "2 of 8 images under" in out and "are color" in out and "read as gray (most of them are)" in out
    assert "--in-chans 3" in out
    expect = np.asarray(Image.fromarray(D.to_uint8(rgba), "RGB").convert("L"))
    idx = [i for i in range(len(ds)) if ds.labels[i] == 0][3]  # a/3.png, the RGBA file
    assert torch.equal(ds.images[idx, 0], torch.from_numpy(expect))
    color = load_dataset(root, "all", in_chans=3)  # asked for: color, the gray ones replicated
    assert color.images.shape[1] == 3
    assert "read as color (--in-chans 3)" in capsys.readouterr().out


def test_a_color_majority_stays_color(tmp_path, capsys):
    g = np.random.default_rng(1)
    rgb = [Image.fromarray(g.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB") for _ in range(3)]
    root = _folder(tmp_path, {"a": rgb, "b": rgb[:2] + [Image.new("L", (8, 8), 7)]})
    assert load_dataset(root, "all").images.shape[1] == 3
    assert "1 of 6 images" in capsys.readouterr().out


def test_elongated_image_crop_equals_resize_then_crop_with_bounded_matrices():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 256, (1, 600, 9), dtype=torch.uint8, generator=g)
    full = D.resize_u8(t[None], (round(600 * 32 / 9), 32))[0]  # the old way: the whole resized strip
    y0 = (full.shape[1] - 32) // 2
    assert torch.equal(D.short_side_center_crop(t, 32), full[:, y0:y0 + 32])
    rows = D._resize_matrix(8000, 25600, slice(12784, 12816))  # an 8000 x 10 strip at 32 px
    assert rows.shape == (32, 8000)
    assert torch.allclose(rows.sum(1), torch.ones(32))
    strip = D.short_side_center_crop(torch.full((1, 8000, 10), 200, dtype=torch.uint8), 32)
    assert strip.shape == (1, 32, 32) and int(strip.min()) == int(strip.max()) == 200


def test_resize_matrix_is_unchanged_by_chunking():
    for n, m in ((300, 224), (28, 16), (16, 28), (513, 300)):
        eye = torch.eye(n)[None, None]
        ref = torch.nn.functional.interpolate(eye, size=(m, n), mode="bilinear", align_corners=False,
                                              antialias=m < n)[0, 0]
        assert torch.equal(D._resize_matrix(n, m), ref)


def test_elongated_image_resize_memory_is_bounded():
    """Peak memory of cropping an 8000 x 10 strip to 32 px (was ~1 GB: the whole 25600 x 8000 matrix)."""
    import subprocess
    import sys
    code = ("import resource, torch; from ghostnetv3.data import datasets as D; "
            "t = torch.full((1, 8000, 10), 200, dtype=torch.uint8); "
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; D.short_side_center_crop(t, 32); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) // 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert int(out.stdout.strip()) < 300, f"peak RSS grew by {out.stdout.strip()} MB"
