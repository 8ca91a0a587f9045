"""`make demo`: GhostNetV3-1.0 in train and fused form — size table, fusion, verification, save."""
from __future__ import annotations

import os
import time

import torch

import ghostnetv3
from ghostnetv3.deploy.count import count_params_macs
from ghostnetv3.models import save_state_dict

OUT = os.environ.get("DEMO_OUT", "runs/demo")


def main() -> None:
    t0 = time.time()
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    model = ghostnetv3.create_model("ghostnetv3_100").eval()
    fused = ghostnetv3.reparameterize(model)
    x = torch.randn(2, 3, 224, 224)
    diff = ghostnetv3.verify_fusion(model, fused, x)
    (pt, mt), (pf, mf) = count_params_macs(model), count_params_macs(fused)
    path = os.path.join(OUT, "ghostnetv3_100_fused.safetensors")
    save_state_dict(fused.state_dict(), path, metadata={"model": "ghostnetv3_100", "form": "fused"})
    print("GhostNetV3-1.0 at 224x224, 1000 classes")
    print(f"{'form':<8}{'params':>10}{'MACs':>10}")
    print(f"{'train':<8}{pt / 1e6:>9.2f}M{mt / 1e6:>9.1f}M")
    print(f"{'fused':<8}{pf / 1e6:>9.2f}M{mf / 1e6:>9.1f}M")
    print(f"fusion max |train form - fused| = {diff:.2e}; fused weights: {path}; {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
