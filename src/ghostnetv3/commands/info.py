"""`ghostnetv3 info MODEL`: parameters and MACs of the train form and the fused form;
`ghostnetv3 models`: the model names this tool builds."""
from __future__ import annotations

import json

from ghostnetv3.models.registry import TIMM_NAMES, create_model, list_models
from ghostnetv3.rep import reparameterize
from ghostnetv3.rep.count import count_params_macs

from .model_flags import add_model_args, model_kwargs, parse_input_size

__all__ = ["run_info", "run_models", "add_parser"]


def run_info(args) -> int:
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
    import timm  # lazy: heavy (4 s); `ghostnetv3 --help` and the other commands do not need it

    if args.timm:
        names = timm.list_models(args.timm)
        print("\n".join(names) if names else f"no timm model matches '{args.timm}'")
        return 0
    print("ours (train form with re-parameterization branches; V2 = one branch per site), with their timm names:")
    for name in list_models():
        kind = "GhostNetV3" if name.startswith("ghostnetv3_") else "GhostNetV2"
        width = f" width {int(name[-3:]) / 100:.1f}x" if name[-3:].isdigit() else ""
        print(f"  {name:<16}{TIMM_NAMES[name]:<10}{kind}{width}")
    print("  (timm names: timm.create_model('gnv3_100') once ghostnetv3 is imported; smp: tu-gnv3_100)")
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
