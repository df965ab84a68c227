"""The report and the notebook on the rows of a real (tiny) sweep, not only on hand-made rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from gqa_sweep.store.results import load_runs

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "ablation.ipynb"


def test_gqa_report_cli_on_a_real_sweep(tiny_sweep: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("gqa-report")
    out = tmp_path / "report"
    proc = subprocess.run([str(exe), str(tiny_sweep), "--sweep", "tiny", "--plots", "--format", "all", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    runs = load_runs(tiny_sweep).sort_values("n_kv_heads")
    table = [line for line in proc.stdout.splitlines() if line.startswith("| tiny")]
    assert len(table) == 3  # one row per G
    for line, ppl in zip(table, runs.val_ppl):
        assert f"{ppl:.2f}" in line
    for name in ("ablation.md", "ablation.tex", "ablation.csv", "ppl_vs_G.png", "loss_curves.svg"):
        assert (out / name).stat().st_size > 0, name


def test_notebook_executes_on_a_real_sweep(tiny_sweep: Path, monkeypatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The README's command: `GQA_RESULTS_DIR=results jupyter lab notebooks/ablation.ipynb` from the directory
    # holding results/; the kernel runs in notebooks/, so the path is taken from the shell's PWD.
    monkeypatch.setenv("PWD", str(tiny_sweep.parent))
    monkeypatch.setenv("GQA_RESULTS_DIR", tiny_sweep.name)
    monkeypatch.setenv("GQA_SWEEP", "tiny")
    NotebookClient(nb, kernel_name="python3", timeout=180,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 6  # 5 ablation plots + loss vs position
