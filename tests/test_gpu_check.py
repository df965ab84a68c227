"""scripts/gpu-check.sh without a GPU: its plan, its table, and a real run of two of its steps on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from gqa_sweep.report.gpu_check import run_figure, table
from gqa_sweep.store.results import ResultsStore
from tests.conftest import ROOT, sweep_env

SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def script(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=sweep_env(PYTHON=sys.executable),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_the_plan_is_the_acceptance_by_value(tmp_path: Path) -> None:
    proc = script("--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" ")[0].rstrip(":") for line in lines] == ["sweep", "gpt2", "oom", "decode", "serve", "peak",
                                                                  "tests"]  # fmt: skip
    sweep, gpt2, oom, decode, serve = lines[:5]
    assert "gqa_sweep.cli -m trainer=gpu logger=none results_dir=" in sweep  # the README's sweep, on the GPU
    assert "experiment=gpt2_124m model.n_kv_heads=1,12" in gpt2 and "max_steps" in gpt2
    assert "trainer.compile=false" in oom and "data.batch_size=512,4" in oom
    assert "decode --model llama-7b-layer --batch 16 --context 8192 --device cuda --dtype bf16" in decode
    assert "serve --model llama-7b --device cuda --dtype bf16" in serve
    assert all(int(line.split("(timeout ")[1].split("s)")[0]) <= 170 for line in lines)
    bad = script("--nope", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown option --nope" in bad.stderr


def test_the_table_has_one_line_a_step_and_only_measured_figures(tiny_sweep: Path, tmp_path: Path) -> None:
    oom = tmp_path / "oom"
    ResultsStore(oom).write_run({
        "run_id": "x", "status": "failed", "n_kv_heads": 4, "batch_size": 512, "failed_phase": "train",
        "failed_step": 1, "error": "out of memory in train step 1 (batch 512 x sequence 1024 tokens)\nTraceback",
    })  # fmt: skip
    pd.DataFrame({"dtype": ["bf16"], "peak_GFLOPs": [989e3], "source": ["datasheet"], "measured_GFLOPs": [7.1e5],
                  "measured_of_datasheet": [0.718], "state": ["quiet"]}).to_csv(tmp_path / "peak.csv", index=False)
    (tmp_path / "tests.log").write_text("....s\n===== 4 passed, 1 skipped in 40.12s =====\n")
    steps = tmp_path / "steps.tsv"
    steps.write_text("\n".join([
        f"sweep\tok\t41\truns\t{tiny_sweep}\tREADME sweep",
        f"oom\tfailed (exit 1)\t30\truns\t{oom}\tout of memory as a row",
        "decode\tnot run: no preset\t0\tnone\t-\tdecode bandwidth",
        f"serve\ttimeout after 60 s\t60\tcsv\t{tmp_path / 'serve.csv'}\tserve at 7B",
        f"peak\tok\t3\tcsv\t{tmp_path / 'peak.csv'}\tpeak",
        f"tests\tok\t40\tlog\t{tmp_path / 'tests.log'}\ttests",
    ]) + "\n")  # fmt: skip
    md = table(str(steps)).splitlines()
    assert [c.strip() for c in md[0].split("|")[1:-1]] == ["step", "what", "status", "s", "figures"]
    rows = {line.split("|")[1].strip(): line for line in md[2:]}
    assert list(rows) == ["sweep", "oom", "decode", "serve", "peak", "tests"]
    assert rows["sweep"].count("completed:") == 3 and "G=1 completed: " in rows["sweep"]
    assert "tok/s" in rows["sweep"] and "compile" not in rows["sweep"]  # eager CPU runs: no compile time
    assert "B512 G=4 failed (train step 1): out of memory in train step 1 (batch 512 x sequence 1024" in rows["oom"]
    assert rows["decode"].split("|")[5].strip() == "" and "not run: no preset" in rows["decode"]
    assert rows["serve"].split("|")[5].strip() == ""  # timed out: no figure claimed
    assert "measured_GFLOPs=7.1e+05" in rows["peak"] and "measured_of_datasheet=0.718" in rows["peak"]
    assert rows["tests"].split("|")[5].strip() == "4 passed, 1 skipped in 40.12s"


def test_a_gpu_rows_figure_names_its_peak_and_compile_time() -> None:
    row = pd.Series({"n_kv_heads": 12, "batch_size": 16, "status": "completed", "train_tokens_per_s": 468_000.0,
                     "mfu": 0.4012, "peak_source": "datasheet", "peak_flops": 989e12, "peak_flops_measured": 7.2e14,
                     "val_ppl": 12.345, "compile_s": 41.6, "gpu_others": 0, "vocab_size": 32768})  # fmt: skip
    assert run_figure(row) == ("B16 G=12 completed: 468k tok/s, compile 42 s, MFU 0.401 of datasheet 989TFLOP/s, "
                               "matmul peak measured 720TFLOP/s, val ppl 12.35, other GPU processes 0, "
                               "vocab 32,768")  # fmt: skip


def test_two_steps_run_for_real_on_the_cpu(tmp_path: Path) -> None:
    """The peak (from the tests' planted cache) and the CUDA tests (all skipped here), through the script's
    own loop, timeouts and table."""
    out = tmp_path / "out"
    proc = script("--cpu", "--only", "peak,tests", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    md = (out / "gpu-check.md").read_text()
    assert md.startswith("# gpu-check (cpu): CPU, torch ")
    rows = [line for line in md.splitlines() if line.startswith(("| peak", "| tests"))]
    assert len(rows) == 2 and all("| ok " in r for r in rows), md
    assert "peak_GFLOPs=" in rows[0] and "source=measured" in rows[0]
    assert "skipped" in rows[1] and "passed" not in rows[1]  # no GPU: every CUDA test skipped, none pretended
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["peak.log", "tests.log"]


def test_a_step_past_the_budget_is_listed_as_not_run(tmp_path: Path) -> None:
    """The whole check stays under GPU_CHECK_BUDGET_S (470 s: under 8 minutes with the table)."""
    out = tmp_path / "out"
    env = sweep_env(GPU_CHECK_BUDGET_S="5", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu", "--only", "peak", str(out)], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "steps.tsv").read_text().split("\t")[:2] == ["peak", "not run: the 5 s budget was spent"]
    assert not (out / "logs" / "peak.log").exists()
