"""Build memory peaks against index size (issue 13 §1b), each build in a fresh process.

For each method the child process loads a prepared data set's base (memory-mapped, every page
read once so the base is resident), takes the worker's training sample (100,000 rows, seed 0),
then measures the resident high-water mark (VmHWM, reset through /proc/self/clear_refs before
each step) over ``fit()`` + ``add()`` and, separately, over ``memory()``; it prints the index
RAM that ``memory()`` reports. ``--code DIR`` runs another source tree's ``methods/`` and
``harness/`` (e.g. the code before the peak fixes, unpacked with ``git archive``), so before and
after are measured on the same data, machine and load.

    OMP_NUM_THREADS=1 python benchmarks/scale_peaks.py -d synthetic-minilm-200k [--code /tmp/before] [--csv out.csv]

The numbers are memory, not time: the machine's load does not change them.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: (method, build parameters) measured by default: the peaks the issue lists
DEFAULT_BUILDS = [
    ("exact", {}),
    ("pq", {"m": 8, "nbits": 8}),
    ("binary-rescore", {"rescore": "int8"}),
    ("lvq", {"bits1": 8, "bits2": 0}),
]

FIELDS = ["code", "dataset", "n", "method", "params", "index_mb", "build_growth_mb", "build_peak_mb",
          "fit_growth_mb", "add_growth_mb", "rss_before_mb", "memory_call_growth_mb", "error"]

CHILD = r"""
import json, sys
sys.path.insert(0, {code!r})
import numpy as np
import methods  # noqa: F401
from harness.dataset import PreparedDataset
from harness.registry import get_method

def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def reset():
    open("/proc/self/clear_refs", "w").write("5")
    return kb("VmRSS")

ds = PreparedDataset({dataset!r})
base = ds.base
for r0 in range(0, base.shape[0], 65536):
    np.add.reduce(base[r0:r0 + 65536], axis=None)
train = base
if ds.n > 100_000:
    rows = np.sort(np.random.default_rng(0).choice(ds.n, 100_000, replace=False))
    train = base[rows]
m = get_method({method!r})(ds.dim, ds.method_metric, **{params!r})
m.expected_n = ds.n
if hasattr(m, "set_num_threads"):
    m.set_num_threads(1)
before = reset()
m.fit(train)
fit_peak = kb("VmHWM")
before_add = reset()
m.add(base)
add_peak = kb("VmHWM")
rss_built = reset()
ram = m.memory().ram
mem_peak = kb("VmHWM")
print(json.dumps({{"rss_before_mb": before / 1024, "build_peak_mb": max(fit_peak, add_peak) / 1024,
                  "build_growth_mb": (max(fit_peak, add_peak) - before) / 1024,
                  "fit_growth_mb": (fit_peak - before) / 1024, "add_growth_mb": (add_peak - before_add) / 1024,
                  "memory_call_growth_mb": (mem_peak - rss_built) / 1024, "index_mb": ram / 2**20}}))
"""


def measure(dataset_dir: str, method: str, params: dict, code: str, timeout: float) -> dict:
    src = CHILD.format(code=code, dataset=dataset_dir, method=method, params=params)
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=timeout, cwd=code)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-d", "--dataset", required=True, help="data set name or folder (prepared if needed)")
    ap.add_argument("--code", default=str(REPO), help="source tree whose methods/ and harness/ to run")
    ap.add_argument("--label", default="", help="label of this code in the table (default: the folder)")
    ap.add_argument("--csv", help="append the rows to this CSV file")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from harness.loaders import load_dataset

    ds = load_dataset(args.dataset, progress=False)
    label = args.label or Path(args.code).name
    rows = []
    print(f"{ds.name}: n={ds.n:,} d={ds.dim}; code: {args.code}")
    print("| code | method | params | index MB | build peak growth MB | ×index | fit growth MB | add growth MB "
          "| memory() growth MB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for method, params in DEFAULT_BUILDS:
        r = measure(str(ds.path), method, params, args.code, args.timeout)
        row = {"code": label, "dataset": ds.name, "n": ds.n, "method": method, "params": json.dumps(params), **r}
        rows.append(row)
        if "error" in r:
            print(f"| {label} | {method} | {params} | failed: {r['error']} | | | | | |")
            continue
        print(f"| {label} | {method} | {params} | {r['index_mb']:.1f} | {r['build_growth_mb']:.1f} | "
              f"{r['build_growth_mb'] / r['index_mb']:.2f} | {r['fit_growth_mb']:.1f} | {r['add_growth_mb']:.1f} | "
              f"{r['memory_call_growth_mb']:.1f} |", flush=True)
    if args.csv:
        f = Path(args.csv)
        new = not f.exists()
        with f.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS, restval="")
            if new:
                w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
