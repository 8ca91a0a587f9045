"""Train-step throughput vs torch threads and OpenMP's wait policy, on the machine as it is now.

Question (issue 16): `train` ran at 8 img/s with 2 threads and ~70 with 1 while another job used the
cores. Is OpenMP spin-waiting the cause (OMP_WAIT_POLICY=PASSIVE), and which default serves a shared
machine? Each setting runs in a fresh process (the policy is read when OpenMP starts), interleaved
rounds, median img/s. Prints one JSON object, with the load average it saw.

    python benchmarks/threads_under_load.py [--steps 15] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, "src")
import ghostnetv3
torch.set_num_threads(int(sys.argv[1]))
m = ghostnetv3.create_model("ghostnetv3_050", num_classes=10, in_chans=1, stem_stride=2).train()
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(64, 1, 32, 32), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
for _ in range(3): step()
t = time.perf_counter()
for _ in range(int(sys.argv[2])): step()
print(64 * int(sys.argv[2]) / (time.perf_counter() - t))
"""

SETTINGS = {
    "1 thread": (1, {}),
    "2 threads": (2, {}),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": (2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "2 threads, GOMP_SPINCOUNT=0": (2, {"GOMP_SPINCOUNT": "0"}),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for _ in range(a.rounds):
        for name, (threads, extra) in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env.update(OMP_NUM_THREADS=str(threads), **extra)
            out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(a.steps)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            rates[name].append(float(out.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "threads_under_load", "model": "ghostnetv3_050 1ch 32px stem 2, batch 64, SGD",
                      "cores_allowed": len(os.sched_getaffinity(0)), "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg(), "steps": a.steps, "rounds": a.rounds,
                      "img_s_median": {k: round(statistics.median(v), 1) for k, v in rates.items()},
                      "img_s_all": {k: [round(r, 1) for r in v] for k, v in rates.items()}}, indent=1))


if __name__ == "__main__":
    main()
