"""Checkpoints that survive crashes and load with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings and lists — no pickled objects — so it
is safe to load from anywhere. It is written to a temp file in the same directory, fsynced and
renamed over the old one: a crash or a full disk leaves the previous checkpoint intact, and a
failed save removes its temp file (a full disk stays no fuller than before).

Every reader goes through `load`, so a broken file (empty, truncated, random bytes, a pickle of
Python objects) is one error that names the file and says what to do, in every command.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import yaml

from ghostnetv3 import safeload
from ghostnetv3.errors import SaveError

# ---- the run directory's format, in one place: engine/state.py writes it, engine/run.py reads it ----
# its files
LAST = "last.pt"                # everything `--resume` needs (TRAIN_FORMAT)
BEST = "best.pt"                # the weights the validation picked, with their metrics (WEIGHTS_FORMAT)
CONFIG_FILE = "config.yaml"     # the config as asked, for people (the checkpoint's own copy is the truth)
PLAN_FILE = "plan.json"         # the schedule the run planned (plan.RunPlan)
METRICS_FILE = "metrics.jsonl"  # one JSON record per logged step and per epoch
TRAIN_FORMAT = "ghostnetv3-train/1"
WEIGHTS_FORMAT = "ghostnetv3-weights/1"
# the keys both checkpoint files hold: what the run is, and its weights
FORMAT_KEY = "format"
MODEL_NAME_KEY = "model_name"
NUM_CLASSES_KEY = "num_classes"
IN_CHANS_KEY = "in_chans"
CLASSES_KEY = "classes"         # class names, label i = classes[i]
CONFIG_KEY = "config"           # TrainConfig.to_dict() as asked (engine.config.from_checkpoint_dict reads it)
PLAN_KEY = "plan"               # RunPlan.to_dict()
RAW_KEY = "state_dict"          # the raw weights
EMA_KEY = "state_dict_ema"      # the EMA weights (None without EMA)
BEST_SOURCE_KEY = "best_source"  # 'raw' | 'ema': the weights the validation picked
# keys that say how to run, not what to compute: a config.yaml may differ in them from the checkpoint,
# and a resume that changes them stays exact
RUN_KEYS = frozenset({"resume", "output", "experiment", "log_interval", "checkpoint_interval", "workers",
                      "device", "threads", "log_tensorboard", "log_wandb"})


def _write(obj: Any, f) -> None:
    torch.save(obj, f)


# --------------------------------------------------------------------------- saving

def _nbytes(obj: Any) -> int:
    """About how many bytes `torch.save(obj)` writes (tensor storage dominates)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values()) + 64 * len(obj)
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj) + 16 * len(obj)
    return 64


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def _disk_full(e: BaseException) -> bool:
    """torch's zip writer reports a full disk as RuntimeError('... unexpected pos ...') whose context
    is the OSError(ENOSPC) of the failed write; look through the chain."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _free_bytes(directory: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _resume_hint(directory: Path) -> str:
    """The SIGTERM hint: where a run can continue from after a failed save."""
    if (directory / LAST).is_file():
        return f"then continue with: ghostnetv3 train --resume {directory}"
    return "then start the run again"


def save_error(path: Path, e: BaseException, need: Optional[int] = None, what: str = "write") -> SaveError:
    """One-line SaveError for a failed write of `path` (a checkpoint, a log, config.yaml)."""
    directory = path.parent
    kept = f"; the previous {path.name} is intact" if path.exists() else ""
    free = _free_bytes(directory)
    if _disk_full(e) or (need is not None and free is not None and free < need):
        size = f"it needs about {_mb(need)}" if need else ""
        if free is not None:
            size += (" and " if size else "") + f"{_mb(free)} are free in {directory}"
        return SaveError(f"could not {what} {path} (disk full){kept}; {size + ': ' if size else ''}free space, "
                         f"{_resume_hint(directory)}")
    oserr = next((x for x in (e, e.__cause__, e.__context__) if isinstance(x, OSError)), None)
    why = (oserr.strerror or str(oserr)) if oserr is not None else str(e).splitlines()[0]
    other = "" if (directory / LAST).is_file() else " (or pick another --output)"
    return SaveError(f"could not {what} {path} ({why}){kept}; make {directory} writable{other}, "
                     f"{_resume_hint(directory)}")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            _write(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # RuntimeError: torch's zip writer on a failed write
        tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError) and not _disk_full(e) and "unexpected pos" not in str(e):
            raise  # not a write failure: a bug, keep its traceback
        raise save_error(path, e, _nbytes(obj), what="save checkpoint") from e
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text files of a run (config.yaml, a trimmed metrics.jsonl): temp file + rename, one-line errors."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise save_error(path, e, len(text.encode())) from e


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one log line; a full disk or read-only directory is a one-line SaveError."""
    path = Path(path)
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        raise save_error(path, e) from e


def clean_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Remove `.NAME.tmpPID` files that a killed save left behind. Call only while holding the
    run directory's lock: then no live process is writing them."""
    removed = []
    for p in Path(run_dir).glob(".*.tmp*"):
        if p.is_file() and p.name.rsplit(".tmp", 1)[-1].isdigit():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def clean_unfinished_run(run_dir: str | os.PathLike) -> list[str]:
    """A run killed before its first checkpoint left logs but no last.pt; a fresh start in the same
    directory must not append to them. Returns what was removed."""
    run_dir = Path(run_dir)
    if (run_dir / LAST).exists():
        return []
    removed = [p.name for p in clean_stale_temp_files(run_dir)]
    for name in (METRICS_FILE, "metrics.tmp", CONFIG_FILE):
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    if (run_dir / "tb").is_dir():
        shutil.rmtree(run_dir / "tb", ignore_errors=True)
        removed.append("tb/")
    return removed


# --------------------------------------------------------------------------- loading

def read(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)` (or safetensors) with one-line errors naming the file."""
    return safeload.read(path)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint dict; a broken file is a BadCheckpoint naming it and what to do."""
    return safeload.load(path)


def load_first_intact(path: str | os.PathLike, names: Iterable[str] = (BEST, LAST)) -> tuple[Path, dict[str, Any]]:
    """A run directory's first readable checkpoint of `names` (a note on stderr when an earlier one
    is broken); a file is loaded as itself."""
    p = Path(path)
    if not p.is_dir():
        return find_checkpoint(p), load(find_checkpoint(p))
    if not any((p / n).is_file() for n in names):
        find_checkpoint(p)  # the one error message for "no checkpoint yet"
    return safeload.first_intact([p / n for n in names])


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory (its last.pt) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        if (p / LAST).is_file():
            return p / LAST
        raise FileNotFoundError(f"no checkpoint in {p} (expected {p / LAST}); "
                                f"was the run killed before its first checkpoint? start it again without --resume")
    if p.is_file():
        return p
    raise FileNotFoundError(f"no such run directory or checkpoint: {p}")


def _same(a: Any, b: Any) -> bool:
    return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)


def config_file_edits(run_dir: str | os.PathLike, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys where RUN_DIR/config.yaml differs from the config saved in a checkpoint:
    {key: (checkpoint's value, config.yaml's value)}. The checkpoint's config is the truth in every
    command; config.yaml is its human-readable copy, so an edit there is reported, never used."""
    f = Path(run_dir) / CONFIG_FILE
    if not f.is_file():
        return {}
    try:
        on_disk = yaml.safe_load(f.read_text()) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {"config.yaml": ("readable", "unreadable")}
    if not isinstance(on_disk, dict):
        return {"config.yaml": ("a mapping", type(on_disk).__name__)}
    return {k: (saved.get(k), v) for k, v in on_disk.items()
            if k not in RUN_KEYS and k in saved and not _same(saved.get(k), v)}


def _config_of_last(run_dir: Path, checkpoint: Path) -> Optional[dict[str, Any]]:
    """The config inside RUN_DIR/last.pt when `checkpoint` is another file of the run (its best.pt);
    memory-mapped, so the weights are not read. None when there is none or it does not read."""
    last = run_dir / LAST
    try:
        if not last.is_file() or last.resolve() == checkpoint.resolve():
            return None
        state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a broken last.pt only loses the explanation; eval reads best.pt
        return None
    cfg = state.get("config") if isinstance(state, dict) else None
    return cfg if isinstance(cfg, dict) else None


def _resume_change(key: str, old: Any, new: Any) -> str:
    """A change `--resume` made, in words: --epochs past the end is an extended schedule."""
    if key == "epochs" and isinstance(old, int) and isinstance(new, int):
        kind = "an extended" if new > old else "a shortened"
        return f"{kind} schedule (epochs {old} -> {new})"
    return f"{key} {old!r} -> {new!r}"


def report_config_edits(run_dir: str | os.PathLike, saved: dict[str, Any], checkpoint: str | os.PathLike,
                        advice: str = "", later_config: Optional[dict[str, Any]] = None) -> dict[str, tuple[Any, Any]]:
    """Print one note when config.yaml differs from the config inside `checkpoint`: either the run was
    resumed with changed keys after `checkpoint` was saved (a best.pt from before `--resume --epochs N`
    extended the run: last.pt agrees with config.yaml), or config.yaml was edited by hand.
    `later_config`: last.pt's config when the caller has read it already (else it is memory-mapped)."""
    edits = config_file_edits(run_dir, saved)
    if not edits:
        return edits
    run_dir, checkpoint = Path(run_dir), Path(checkpoint)
    later = (later_config if later_config is not None else _config_of_last(run_dir, checkpoint)) or {}
    resumed = {k: ab for k, ab in edits.items() if k in later and _same(later[k], ab[1])}
    if resumed:
        print(f"note: {checkpoint} was saved before the run was resumed with "
              + ", ".join(_resume_change(k, a, b) for k, (a, b) in resumed.items())
              + f"; config.yaml and {LAST} hold the new values (not an edit), and {checkpoint.name}'s own "
              f"config is used for its weights", file=sys.stderr, flush=True)
    edited = {k: ab for k, ab in edits.items() if k not in resumed}
    if edited:
        print(f"note: {run_dir / CONFIG_FILE} differs from the config inside {checkpoint} ("
              + ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} in config.yaml" for k, (a, b) in edited.items())
              + "); the checkpoint's config is used" + (f" — {advice}" if advice else ""),
              file=sys.stderr, flush=True)
    return edits


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DDP and torch.compile wrappers add prefixes; checkpoints never carry them."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


# --- RNG states as tensors (weights_only-safe) ---

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gauss": float(np_state[4]),
        "python_version": int(py_version),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": py_gauss,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached_gauss"]))
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_internal"].tolist()),
                     state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
