"""`ghostnetv3 info MODEL`: parameters and MACs of the train form and the fused form."""
from __future__ import annotations

import json


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


def run_info(args) -> int:
    from ..rep.count import count_params_macs
    from ..rep import reparameterize
    from .registry import create_model
    size = parse_input_size(args.input_size)
    model = create_model(args.model, num_classes=args.num_classes, in_chans=size[0], **model_kwargs(args)).eval()
    p_train, m_train = count_params_macs(model, size)
    p_fused, m_fused = count_params_macs(reparameterize(model), size)
    row = {"model": args.model, "input_size": list(size), "num_classes": args.num_classes,
           "train_params": p_train, "train_macs": m_train, "fused_params": p_fused, "fused_macs": m_fused}
    if args.json:
        print(json.dumps(row))
        return 0
    print(f"{args.model}  input {size[0]}x{size[1]}x{size[2]}  classes {args.num_classes}")
    print(f"{'form':<8}{'params':>12}{'MACs':>12}")
    print(f"{'train':<8}{p_train / 1e6:>11.2f}M{m_train / 1e6:>11.1f}M")
    print(f"{'fused':<8}{p_fused / 1e6:>11.2f}M{m_fused / 1e6:>11.1f}M")
    return 0


def run_models(args) -> int:
    """Our registered models, then how to name the others (timm, torchvision)."""
    from .registry import TIMM_NAMES, list_models
    if args.timm:
        import timm
        names = timm.list_models(args.timm)
        print("\n".join(names) if names else f"no timm model matches '{args.timm}'")
        return 0
    print("ours (train form with re-parameterization branches; V2 = one branch per site), with their timm names:")
    for name in list_models():
        kind = "GhostNetV3" if name.startswith("ghostnetv3_") else "GhostNetV2"
        width = f" width {int(name[-3:]) / 100:.1f}x" if name[-3:].isdigit() else ""
        print(f"  {name:<16}{TIMM_NAMES[name]:<10}{kind}{width}")
    print("  (timm names: timm.create_model('gnv3_100') once ghostnetv3 is imported; smp: tu-gnv3_100)")
    import timm
    print(f"any timm name ({len(timm.list_models())} in timm {timm.__version__}; "
          "`ghostnetv3 models --timm 'mobilenet*'` to search), and torchvision/<name> "
          "(e.g. torchvision/shufflenet_v2_x1_0)")
    print("sizes: ghostnetv3 info MODEL --input-size 3 224 224")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="parameters and MACs in train and fused form")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=run_info)

    m = sub.add_parser("models", help="list the model names this tool builds")
    m.add_argument("--timm", metavar="PATTERN", default=None, help="list timm's names matching a wildcard")
    m.set_defaults(func=run_models)
