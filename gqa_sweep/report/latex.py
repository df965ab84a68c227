"""Report text as LaTeX that compiles with pdflatex and booktabs alone (no amssymb, no inputenc tricks).

Every character the report writes outside ASCII has an ASCII spelling here (Greek and operators in math mode,
marks as words), `^x` becomes a superscript and Markdown's `**bold**` becomes \\textbf; an unknown non-ASCII
character is left to pdflatex's UTF-8 input (Latin letters in a user's labels still compile).
"""

from __future__ import annotations

import re

import pandas as pd

_CHARS = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "—": "--", "−": "$-$", "·": r"$\cdot$", "×": r"$\times$", "→": r"$\to$", "≤": r"$\leq$",
    "≈": r"$\approx$", "√": r"$\surd$", "²": r"\textsuperscript{2}", "★": r"$\star$",
    "Δ": r"$\Delta$", "Σ": r"$\Sigma$", "α": r"$\alpha$", "δ": r"$\delta$", "σ": r"$\sigma$", "χ": r"$\chi$",
    "⚠": "(!)", "✓": "yes", "✗": "no",
})  # fmt: skip
# `N^-α_G`: a superscript runs to the next space or bracket.
_SUPERSCRIPT = re.compile(r"\^([^\s()\[\],]+)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def latex_text(s: str) -> str:
    """`s` as LaTeX text: special characters escaped, symbols spelled, superscripts raised."""
    out, last = [], 0
    for m in _SUPERSCRIPT.finditer(s):
        out += [s[last:m.start()].translate(_CHARS), r"\textsuperscript{" + m.group(1).translate(_CHARS) + "}"]
        last = m.end()
    text = "".join(out) + s[last:].translate(_CHARS)
    return _BOLD.sub(r"\\textbf{\1}", text)


def latex_table(shown: pd.DataFrame, caption: str, label: str) -> str:
    """A display table as a booktabs LaTeX `table` (pandas Styler: \\toprule, \\midrule, \\bottomrule)."""
    shown = shown.map(lambda s: latex_text(str(s)))
    shown.columns = [latex_text(str(c)) for c in shown.columns]
    return shown.style.hide(axis="index").to_latex(
        hrules=True, column_format="l" + "r" * (shown.shape[1] - 1),
        caption=latex_text(caption), label=label, position_float="centering",
    )
