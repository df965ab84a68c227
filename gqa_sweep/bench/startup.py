"""Start-up benchmark: how long `gqa-sweep` takes to reject bad input and to print `--help`.

Each command runs in a fresh subprocess (as a user runs it), N times; the table gives the median and
range of wall time. Bad input must fail before torch and Lightning load (target: <= 1.5 s). For contrast,
`import torch, lightning` alone is timed the same way. Writes the table to results/bench/startup.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

from gqa_sweep.train.metrics import device_name

CLI = [sys.executable, "-m", "gqa_sweep.cli"]
CASES = [
    ("bad G: gqa-sweep model.n_kv_heads=3", [*CLI, "model.n_kv_heads=3"], 1),
    ("bad G in a sweep: gqa-sweep -m model.n_kv_heads=1,3", [*CLI, "-m", "model.n_kv_heads=1,3"], 1),
    ("bad lr: gqa-sweep optim.lr=-1", [*CLI, "optim.lr=-1"], 1),
    ("gqa-sweep --help", [*CLI, "--help"], 0),
    ("reference: python -c 'import torch, lightning'", [sys.executable, "-c", "import torch, lightning"], 0),
]


def time_command(cmd: list[str], expect_rc: int, repeats: int, cwd: Path) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
        if proc.returncode != expect_rc:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}, expected {expect_rc}: {proc.stderr[-500:]}")
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gqa-bench startup", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="runs per command (median reported; default 7)")
    p.add_argument("--out", default="results/bench", help="directory for startup.md (default results/bench)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:  # results_dir defaults to ./results: keep runs out of the repo
        for label, cmd, rc in CASES:
            t = time_command(cmd, rc, args.repeats, Path(tmp))
            rows.append({"command": label, "median s": f"{statistics.median(t):.2f}",
                         "min s": f"{min(t):.2f}", "max s": f"{max(t):.2f}", "n": len(t)})
        leftovers = sorted(str(q.relative_to(tmp)) for q in Path(tmp).rglob("*"))
    table = pd.DataFrame(rows).to_markdown(index=False)
    header = f"gqa-sweep start-up, {date.today()}, {device_name('cpu')}, wall time per fresh process"
    note = f"files left by the bad-input runs: {', '.join(leftovers) or 'none'}"
    text = f"{header}\n\n{table}\n\n{note}\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "startup.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
