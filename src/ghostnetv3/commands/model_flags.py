"""The model flags `info` and `fuse` share: a model name, class count, input size and architecture knobs."""
from __future__ import annotations

__all__ = ["parse_input_size", "model_kwargs", "add_model_args"]


def parse_input_size(values, in_chans: int = 3) -> tuple[int, int, int]:
    """timm-style --input-size: C H W, or H W, or one square size."""
    v = [int(x) for x in values]
    if len(v) == 1:
        return (in_chans, v[0], v[0])
    if len(v) == 2:
        return (in_chans, v[0], v[1])
    if len(v) == 3:
        return (v[0], v[1], v[2])
    raise ValueError(f"--input-size takes 1 (S), 2 (H W) or 3 (C H W) numbers, got {len(v)}")


def model_kwargs(args) -> dict:
    kw = {}
    for key in ("width", "num_conv_branches", "stem_stride", "output_stride"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    return kw


def add_model_args(p) -> None:
    p.add_argument("model", help="model name (ghostnetv3_050/100/130/160, ghostnetv2_*, or a timm name)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--input-size", nargs="+", default=["3", "224", "224"], metavar="N",
                   help="C H W (or H W, or S); default 3 224 224")
    p.add_argument("--width", type=float, default=None, help="width multiplier (GhostNet models)")
    p.add_argument("--num-conv-branches", type=int, default=None)
    p.add_argument("--stem-stride", type=int, default=None, help="1 for tiny images (GhostNet models)")
    p.add_argument("--output-stride", type=int, default=None,
                   help="total downsampling (GhostNet models: 32 = the paper's layout; 16/8/4 run the last "
                        "downsampling stages at stride 1)")
