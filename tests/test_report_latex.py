"""Every .tex the report writes compiles with pdflatex + booktabs: no character or superscript LaTeX cannot take."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gqa_sweep.report import main
from gqa_sweep.report.latex import latex_text
from gqa_sweep.store.results import ResultsStore
from tests import test_report, test_report_fair, test_report_recall, test_report_variants, test_stability

REPORT = Path(__file__).parents[1] / "gqa_sweep" / "report"


def test_every_symbol_the_report_writes_has_an_ascii_latex_spelling():
    symbols = {c for p in REPORT.glob("*.py") for c in p.read_text() if ord(c) > 127}
    assert {"±", "Δ", "α", "⚠", "✓", "✗", "→"} <= symbols
    for c in sorted(symbols):
        assert latex_text(c).isascii(), c


@pytest.mark.parametrize(("text", "tex"), [
    ("L_G(N) = E_G + A_G · N^-α_G (95 % bootstrap)",
     r"L\_G(N) = E\_G + A\_G $\cdot$ N\textsuperscript{-$\alpha$\_G} (95 \% bootstrap)"),
    ("0.01 ⚠ edge of the grid: widen it", "0.01 (!) edge of the grid: widen it"),
    ("[3.1, 3.2] ✓", "[3.1, 3.2] yes"),
    ("**winner**", r"\textbf{winner}"),
    ("12.00 ± —", r"12.00 $\pm$ --"),
    ("a^b & c_d # $", r"a\textsuperscript{b} \& c\_d \# \$"),
])  # fmt: skip
def test_latex_text(text, tex):
    assert latex_text(text) == tex


def _ladder(path: Path) -> None:
    """A 4-size ladder of 3 G x 2 seeds on a known law (the smallest --scaling accepts)."""
    store, rng = ResultsStore(path), np.random.default_rng(0)
    for k, N in enumerate(np.logspace(4.3, 5.3, 4)):
        for G, s in {4: 1.0, 2: 0.85, 1: 0.7}.items():
            for seed in range(2):
                loss = (3.0 + 40 * (s * N) ** -0.3) * np.exp(0.002 * rng.standard_normal())
                store.write_run({"run_id": f"r{k}{G}{seed}", "sweep": "ladder", "status": "completed", "n_heads": 4,
                                 "n_kv_heads": G, "n_params_non_embedding": int(N), "val_loss": loss, "seed": seed,
                                 "model_name": f"ladder-s{k + 1}"})  # fmt: skip


def _stores(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """Stores holding every kind of table, each with the gqa-report flags that report it."""
    stores = {name: root / name for name in ("g", "fair", "variants", "stability", "recall", "ladder")}
    g = ResultsStore(stores["g"])
    for write in (test_report._g_sweep, test_report._lr_grid, test_report._convert):
        write(g)
    test_report_fair._runs(stores["fair"])
    test_report_variants.write_store(stores["variants"])
    s = ResultsStore(stores["stability"])
    for row, history in test_stability._rows():
        s.write_run(row, history)
    r = ResultsStore(stores["recall"])
    for G, seed in ((1, 0), (1, 1), (4, 0), (4, 1)):
        r.write_run(test_report_recall.mqar_row(G, seed, 1e-3, 0.9 + 0.01 * seed, 0.3 * G / 4))
    _ladder(stores["ladder"])
    return {k: (d, ["--scaling", "--draws", "20"] if k == "ladder" else []) for k, d in stores.items()}


@pytest.fixture(scope="module")
def tex_files(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("latex")
    for name, (store, flags) in _stores(root).items():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main([str(store), "--format", "latex", "--out", str(root / "tex" / name), *flags]) == 0, name
    return sorted((root / "tex").rglob("*.tex"))


def test_every_table_kind_is_written_in_plain_latex(tex_files):
    names = {p.stem for p in tex_files}
    assert names >= {"ablation", "lr_sensitivity", "conversion", "fair", "variants", "stability", "attn_logits",
                     "divergence", "recall", "scaling_models", "scaling_fit", "scaling_holdout",
                     "scaling_progressive", "scaling_extrapolation"}  # fmt: skip
    for p in tex_files:
        text = p.read_text()
        assert text.isascii(), (p.name, sorted({c for c in text if not c.isascii()}))
        assert "^" not in text, p.name  # a superscript outside math mode stops pdflatex ("Missing $ inserted")
        assert r"\toprule" in text and r"\bottomrule" in text
    fit = next(p for p in tex_files if p.stem == "scaling_fit").read_text()
    assert r"N\textsuperscript{-$\alpha$\_G}" in fit


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (apt: texlive-latex-base, "
                    "texlive-latex-recommended for booktabs)")
def test_every_table_compiles_with_pdflatex_and_booktabs(tex_files, tmp_path):
    body = "".join(f"\\input{{{p.as_posix()}}}\n\\clearpage\n" for p in tex_files)
    doc = tmp_path / "tables.tex"
    doc.write_text(f"\\documentclass{{article}}\n\\usepackage{{booktabs}}\n\\begin{{document}}\n{body}\\end{{document}}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    # The error, and the table it is in: the last file pdflatex opened before it.
    head = proc.stdout.split("\n! ", 1)[0]
    assert proc.returncode == 0, (re.findall(r"\(([^()\s]+\.tex)", head)[-1:], re.findall(r"^! .*", proc.stdout, re.M))
    assert doc.with_suffix(".pdf").stat().st_size > 0
    assert proc.stdout.count("[") >= len(tex_files)  # a page per table
