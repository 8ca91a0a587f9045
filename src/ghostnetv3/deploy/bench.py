"""Size and speed of a model in every form it ships in: params/MACs (train and fused form) and
latency (median, p90) of PyTorch eager, onnxruntime, OpenVINO, ExecuTorch (XNNPACK) and LiteRT,
fp32 and INT8.

How the timing avoids interference: each backend is timed in its own block (warm-up, then
consecutive calls), never call-by-call interleaved with another runtime, because a runtime's idle
worker threads keep spinning after a call and slow whatever runs next (PyTorch eager measured
2.8x slower interleaved with onnxruntime). onnxruntime sessions are also built with
`session.intra_op.allow_spinning = "0"`. The blocks are repeated in `rounds` passes over all
backends, so a load spike from another process on a shared machine hits every backend alike.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ghostnetv3.deploy.backends import backend_for
from ghostnetv3.deploy.backends.executorch import set_executorch_threads
from ghostnetv3.deploy.backends.onnx import quantize_onnx
from ghostnetv3.deploy.extras import MissingExtraError, install_hint, missing
from ghostnetv3.deploy.load import load_for_deploy
from ghostnetv3.deploy.prepare import to_deploy_form
from ghostnetv3.deploy.runner import open_runner
from ghostnetv3.deploy.scoring import eval_batches
from ghostnetv3.deploy.steps import sigterm_interrupts, step
from ghostnetv3.rep.count import count_params_macs

__all__ = ["bench", "time_blocks", "time_interleaved", "summarize", "format_table", "machine_info",
           "make_runners", "select_backends", "write_report", "BACKENDS", "BACKEND_GROUPS"]

# --backends names -> the rows they time
BACKEND_GROUPS = {
    "torch": ("torch_eager_fp32",),
    "onnxruntime": ("onnxruntime_fp32", "onnxruntime_int8"),
    "openvino": ("openvino_fp32", "openvino_int8"),
    "executorch": ("executorch_xnnpack_fp32", "executorch_xnnpack_int8"),
    "litert": ("litert_fp32", "litert_int8"),
}
BACKENDS = tuple(b for rows in BACKEND_GROUPS.values() for b in rows)
# --backends name -> the file format it runs (torch: the model itself)
GROUP_FORMAT = {"torch": None, "onnxruntime": "onnx", "openvino": "openvino", "executorch": "executorch",
                "litert": "tflite"}


def select_backends(spec: str | Sequence[str] = "all") -> tuple[list[str], dict[str, str]]:
    """(groups to time, {group: why skipped}). 'all' takes every installed group; a group asked
    for by name whose runtime is missing is a one-line error naming the extra."""
    names = list(BACKEND_GROUPS) if spec in ("all", None) else (
        [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec))
    unknown = [n for n in names if n not in BACKEND_GROUPS]
    if unknown:
        raise ValueError(f"--backends: unknown {', '.join(unknown)}; use {', '.join(BACKEND_GROUPS)} or all")
    groups, skipped = [], {}
    for g in names:
        absent = missing(backend_for(GROUP_FORMAT[g]).PACKAGES if GROUP_FORMAT[g] else ())
        if not absent:
            groups.append(g)
        elif spec in ("all", None):
            skipped[g] = f"not installed ({', '.join(absent)}): {install_hint(absent)}"
        else:
            raise MissingExtraError(f"backend {g} needs {', '.join(absent)}: {install_hint(absent)}")
    return groups, skipped


def time_blocks(fns: dict[str, Callable[[], Any]], repeats: int = 30, warmup: int = 5,
                rounds: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each function: `rounds` passes; in each, every function runs alone
    in its own block: `warmup` untimed calls, then its share of `repeats` timed calls."""
    rounds = max(1, min(rounds, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    times: dict[str, list[float]] = {k: [] for k in fns}
    for n in per_round:
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 30,
                     warmup: int = 5) -> dict[str, list[float]]:
    """Seconds per call of each function, measured round-robin after `warmup` calls each. Fair
    for PyTorch-only comparisons; across runtimes use `time_blocks` (spinning threads)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def summarize(seconds: Sequence[float], batch_size: int = 1) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    med = float(np.median(ms))
    return {"median_ms": round(med, 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "min_ms": round(float(ms.min()), 3), "images_per_s": round(batch_size * 1e3 / med, 1)}


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__}
    for pkg in ("onnxruntime", "openvino", "nncf", "executorch", "litert-torch", "ai-edge-litert"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def _count(model: nn.Module, input_size: Sequence[int]) -> tuple[int, Optional[int]]:
    params, macs = count_params_macs(model, tuple(input_size))
    return int(params), int(macs)


class _Calibration:
    """The same INT8 calibration images for every backend: `calib_data`'s train split, else
    random normal images (fine for latency, says nothing about accuracy)."""

    def __init__(self, calib_data: Optional[str], cfg: dict, input_size: Sequence[int], size: int):
        if calib_data:
            batches, _ = eval_batches(calib_data, "train", {**cfg, "in_chans": input_size[0],
                                                             "img_size": input_size[1]}, size, 8)
            self.batches = [x for x, _ in batches]
            self.name = f"{calib_data}:train"
        else:
            g = torch.Generator().manual_seed(0)
            self.batches = [torch.randn(8, *input_size, generator=g).numpy() for _ in range(max(1, size // 8))]
            self.name = "random normal images"

    def __call__(self):
        return iter(self.batches)


def _onnx_runners(fused: nn.Module, input_size: Sequence[int], threads: int, int8: bool, calib: Callable[[], Any],
                  workdir: Path, cache: dict, log: Callable[[str], None]) -> dict[str, Callable]:
    """onnxruntime's rows: the files exported once, with a dynamic batch (kept in `cache`)."""
    if "onnx" not in cache:
        with step(log, f"exporting ONNX{' and quantizing it to INT8 (onnxruntime)' if int8 else ''}"):
            fp32 = backend_for("onnx").export(fused, workdir / "fp32.onnx", input_size, dynamic_batch=True)
            cache["onnx"] = [fp32]
            if int8:
                quantize_onnx(fp32, workdir / "int8.onnx", calib())
                cache["onnx"].append(workdir / "int8.onnx")
    return {row: open_runner(path, "onnx", threads) for path, row in zip(cache["onnx"], BACKEND_GROUPS["onnxruntime"])}


def _edge_runners(fused: nn.Module, input_size: Sequence[int], batch: int, group: str, threads: int, int8: bool,
                  calib: Callable[[], Any], workdir: Path, log: Callable[[str], None],
                  failed: Optional[dict[str, str]]) -> dict[str, Callable]:
    """An on-device group's rows: files exported at this batch size (their shapes are fixed). An
    INT8 conversion that its converter refuses is left out and recorded in `failed`."""
    fmt, (row32, row8) = GROUP_FORMAT[group], BACKEND_GROUPS[group]
    backend, runners = backend_for(fmt), {}
    with step(log, f"exporting {fmt} fp32 at batch {batch}"):
        path = backend.export(fused, workdir / f"{fmt}_b{batch}_fp32{backend.SUFFIX}", input_size, batch)
        runners[row32] = open_runner(path, fmt, threads)
    if not int8:
        return runners
    try:
        with step(log, f"quantizing {fmt} to INT8 at batch {batch} (calibrating, then lowering)"):
            path8, _, _ = backend.export_int8(fused, workdir / f"{fmt}_b{batch}_int8{backend.SUFFIX}",
                                              input_size, calib(), batch)
    except (ValueError, RuntimeError) as e:  # the converters' own refusals
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        log(f"{row8} at batch {batch}: the converter failed, row left out: {why}")
        if failed is not None:
            failed[f"{row8}@{batch}"] = why
    else:
        runners[row8] = open_runner(path8, fmt, threads)
    return runners


def make_runners(fused: nn.Module, input_size: Sequence[int], batch: int, groups: Sequence[str],
                 threads: int, int8: bool, calib: Callable[[], Any], workdir: Path,
                 cache: dict, log: Callable[[str], None] = print,
                 failed: Optional[dict[str, str]] = None) -> tuple[dict[str, Callable], dict[str, float]]:
    """({row name: runner taking a float32 NCHW batch}, {row name: max |fp32 file - PyTorch|}).
    On-device files are exported at this batch size (their shapes are fixed); ONNX once, with a
    dynamic batch (kept in `cache`). An on-device INT8 conversion that its converter refuses is
    left out and recorded in `failed` ({row@batch: the converter's first line}): one converter's
    limit should not cost the whole table."""
    runners: dict[str, Callable] = {}
    for g in groups:
        if g == "torch":
            runners["torch_eager_fp32"] = lambda x: _no_grad(fused, torch.from_numpy(x))
        elif g == "onnxruntime":
            runners.update(_onnx_runners(fused, input_size, threads, int8, calib, workdir, cache, log))
        else:
            runners.update(_edge_runners(fused, input_size, batch, g, threads, int8, calib, workdir, log, failed))
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(batch))
    ref = _no_grad(fused, x).numpy()
    diffs = {row: float(np.abs(np.asarray(run(x.numpy())) - ref).max())
             for row, run in runners.items() if row.endswith("fp32")}
    return runners, diffs


def bench(spec: str, *, input_size: Optional[Sequence[int]] = None, batch_sizes: Sequence[int] = (1, 32),
          threads: Optional[int] = None, repeats: int = 30, warmup: int = 5,
          calib_data: Optional[str] = None, calib_size: int = 64, int8: bool = True,
          train_form: bool = False, log: Callable[[str], None] = print,
          weights: Optional[str] = None, checkpoint: Optional[str] = None,
          backends: str | Sequence[str] = "all", rounds: int = 3,
          extra: Optional[dict[str, Callable[[np.ndarray], Any]]] = None,
          model: Optional[str] = None) -> dict[str, Any]:
    """Benchmark MODEL_NAME | RUN_DIR | CHECKPOINT on every backend in `backends` (groups:
    torch, onnxruntime, openvino, executorch, litert; 'all': those installed). INT8 is calibrated
    on `calib_data` (its train split) when given, else on random normal images. `extra`: more
    runners (any batch size) timed in the same blocks, e.g. a baseline model. `model`: the
    architecture of a checkpoint that does not say."""
    threads = int(threads or torch.get_num_threads())
    if any(b < 1 for b in batch_sizes) or repeats < 1 or rounds < 1:
        raise ValueError("batch sizes, --repeats and --rounds must be positive")
    groups, skipped = select_backends(backends)
    net, cfg = load_for_deploy(spec, weights=weights, checkpoint=checkpoint, model=model,
                               in_chans=int(input_size[0]) if input_size else None)
    if input_size:
        if len(input_size) != 3:
            raise ValueError(f"--input-size is C H W, got {list(input_size)}")
        input_size = tuple(int(s) for s in input_size)
    else:
        input_size = (int(cfg["in_chans"]), int(cfg["img_size"]), int(cfg["img_size"]))
    torch.set_num_threads(threads)
    if "executorch" in groups:
        set_executorch_threads(threads)
    fused, info = to_deploy_form(net, log=lambda m: None)
    p_train, m_train = _count(net, input_size)
    p_fused, m_fused = _count(fused, input_size)
    calib = _Calibration(calib_data, cfg, input_size, calib_size) if int8 else None
    result: dict[str, Any] = {
        "model": cfg["model"], "source": str(spec), "weights": cfg.get("weights"),
        "weights_from": cfg.get("weights_from"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "input_size": list(input_size), "batch_sizes": list(batch_sizes), "repeats": repeats,
        "warmup": warmup, "rounds": rounds, "machine": machine_info(threads),
        "timing": f"each backend alone in its own block ({warmup} warm-up calls, then consecutive timed "
                  f"calls), {rounds} passes over all backends; onnxruntime with allow_spinning=0",
        "params": {"train_form": p_train, "fused": p_fused},
        "macs": {"train_form": m_train, "fused": m_fused},
        "backends": groups, "skipped": skipped, "failed": {}, "max_diff_vs_torch": {}, "latency": []}
    if calib is not None:
        result["int8_calibration"] = calib.name
        result["int8_calib_images"] = sum(len(b) for b in calib.batches)

    cache: dict = {}
    with sigterm_interrupts(), tempfile.TemporaryDirectory() as tmp:
        for b in batch_sizes:
            x = torch.randn(b, *input_size, generator=torch.Generator().manual_seed(b))
            xn = x.numpy()
            runners, diffs = make_runners(fused, input_size, b, groups, threads, int8, calib, Path(tmp), cache, log,
                                          result["failed"])
            result["max_diff_vs_torch"].update({f"{k}@{b}": v for k, v in diffs.items()})
            fns: dict[str, Callable[[], Any]] = {}
            if train_form:
                fns["torch_eager_fp32_train_form"] = lambda: _no_grad(net, x)
            fns.update({name: (lambda r=run: r(xn)) for name, run in {**runners, **(extra or {})}.items()})
            log(f"timing batch {b}: {', '.join(fns)} ({repeats} calls each in {rounds} blocks, threads: {threads})")
            times = time_blocks(fns, repeats, warmup, rounds)
            for name, t in times.items():
                result["latency"].append({"backend": name, "batch_size": b, **summarize(t, b)})
            del runners, fns
    result["machine"]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    eager = {r["batch_size"]: r["median_ms"] for r in result["latency"] if r["backend"] == "torch_eager_fp32"}
    for r in result["latency"]:
        if r["batch_size"] in eager:
            r["vs_eager_fused"] = round(r["median_ms"] / eager[r["batch_size"]], 3)
    return result


@torch.no_grad()
def _no_grad(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _fmt_count(n: Optional[int], unit: str) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M{unit}"


def format_table(r: dict[str, Any]) -> str:
    lines = [f"{r['model']} ({r.get('weights_from') or r['weights']}) at {'x'.join(map(str, r['input_size']))}, "
             f"threads: {r['machine']['threads']}",
             f"params: train form {_fmt_count(r['params']['train_form'], '')}, fused "
             f"{_fmt_count(r['params']['fused'], '')}; MACs: train form "
             f"{_fmt_count(r['macs']['train_form'], '')}, fused {_fmt_count(r['macs']['fused'], '')}"]
    rows = [("backend", "batch", "median ms", "p90 ms", "img/s", "vs eager")]
    for x in r["latency"]:
        vs = f"{x['vs_eager_fused']:.2f}x" if "vs_eager_fused" in x else "-"
        rows.append((x["backend"], str(x["batch_size"]), f"{x['median_ms']:.2f}", f"{x['p90_ms']:.2f}",
                     f"{x['images_per_s']:.1f}", vs))
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(row)) for row in rows]
    lines += [f"skipped {g}: {why}" for g, why in r.get("skipped", {}).items()]
    lines += [f"failed {row}: {why}" for row, why in r.get("failed", {}).items()]
    return "\n".join(lines)


def format_markdown(r: dict[str, Any]) -> str:
    """The table as markdown, with what was measured, how, and on what machine."""
    m = r["machine"]
    head = [f"## {r['model']} at {'x'.join(map(str, r['input_size']))}, {m['threads']} threads",
            "",
            f"- date: {r.get('date', '-')}; machine: {m['cpu']} ({m['cores']} cores), load average "
            f"(1 min) {m['load_avg_1m']} before, {m.get('load_avg_1m_after', '-')} after",
            f"- timing: {r.get('timing', 'interleaved')}; {r['repeats']} timed calls per backend and batch",
            f"- weights: {r.get('weights_from') or r.get('weights')}; INT8 calibrated on "
            f"{r.get('int8_calibration', '-')}",
            f"- params: train form {_fmt_count(r['params']['train_form'], '')}, fused "
            f"{_fmt_count(r['params']['fused'], '')}; MACs (per image): train form "
            f"{_fmt_count(r['macs']['train_form'], '')}, fused {_fmt_count(r['macs']['fused'], '')}",
            f"- versions: " + ", ".join(f"{k} {v}" for k, v in m.items()
                                        if k not in ("cpu", "cores", "threads", "load_avg_1m", "load_avg_1m_after")),
            "", "| backend | batch | median ms | p90 ms | img/s | vs eager fp32 |", "|---|---:|---:|---:|---:|---:|"]
    for x in r["latency"]:
        vs = f"{x['vs_eager_fused']:.2f}x" if "vs_eager_fused" in x else "-"
        head.append(f"| {x['backend']} | {x['batch_size']} | {x['median_ms']:.2f} | {x['p90_ms']:.2f} | "
                    f"{x['images_per_s']:.1f} | {vs} |")
    head += [f"\nskipped {g}: {why}" for g, why in r.get("skipped", {}).items()]
    head += [f"\nfailed {row} (converter refused, not timed): {why}" for row, why in r.get("failed", {}).items()]
    return "\n".join(head) + "\n"


_PRECISION_COLORS = {"fp32": "tab:blue", "INT8": "tab:orange"}


def latency_figure(r: dict[str, Any]):
    """Horizontal bars of median latency, one panel per batch size, fp32 and INT8 told apart by
    colour and a legend (a matplotlib Figure)."""
    import matplotlib  # lazy: optional extra (plot)
    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt  # lazy: optional extra (plot)
    from matplotlib.patches import Patch  # lazy: optional extra (plot)
    sizes = list(dict.fromkeys(x["batch_size"] for x in r["latency"]))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 0.45 * len(r["latency"]) / len(sizes) + 2.2),
                             squeeze=False)
    for ax, b in zip(axes[0], sizes):
        rows = [x for x in r["latency"] if x["batch_size"] == b]
        names = [x["backend"] for x in rows]
        ax.barh(names, [x["median_ms"] for x in rows],
                color=[_PRECISION_COLORS["INT8" if n.endswith("int8") else "fp32"] for n in names])
        for i, x in enumerate(rows):
            ax.text(x["median_ms"], i, f" {x['median_ms']:.1f}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("median latency (ms)")
        ax.set_title(f"batch {b}")
    fig.legend(handles=[Patch(color=c, label=k) for k, c in _PRECISION_COLORS.items()], loc="lower center",
               ncol=2, frameon=False, fontsize=9)
    fig.suptitle(f"{r['model']} {'x'.join(map(str, r['input_size']))}, {r['machine']['threads']} threads "
                 f"(load {r['machine']['load_avg_1m']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))  # room for the legend under the panels
    return fig


def plot_latency(r: dict[str, Any], path: str | os.PathLike) -> Path:
    """`latency_figure` as a PNG."""
    import matplotlib.pyplot as plt  # lazy: optional extra (plot)
    fig = latency_figure(r)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(r: dict[str, Any], directory: str | os.PathLike) -> list[Path]:
    """DIR/latency.md, DIR/latency.png, DIR/bench.json."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    md, js = d / "latency.md", d / "bench.json"
    md.write_text(format_markdown(r))
    js.write_text(json.dumps(r, indent=2) + "\n")
    return [md, plot_latency(r, d / "latency.png"), js]
