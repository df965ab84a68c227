"""A busy machine is a caveat, not a blank: throughput of contended runs is shown and flagged (or left out where
quiet runs of the same cell exist), in the table, its note and the decode plot, never an empty axis."""

from __future__ import annotations

import contextlib
import io

import pytest

from gqa_sweep import report
from gqa_sweep.report.plots import plot_decode_vs_g
from gqa_sweep.store.results import ResultsStore, load_runs
from tests.test_report import TINY, _row, md_table

# G -> per seed (contended, cpu_util, decode tok/s, train tok/s)
RUNS = {
    8: [(1, 0.15, 100.0, 1000.0), (1, 0.48, 140.0, 1400.0)],  # every run shared the machine
    1: [(0, 0.98, 300.0, 2000.0), (1, 0.30, 50.0, 500.0)],  # one quiet run: the contended one is left out
}


@pytest.fixture
def runs(tmp_path):
    store = ResultsStore(tmp_path)
    for G, seeds in RUNS.items():
        for seed, (busy, util, dec, train) in enumerate(seeds):
            store.write_run(_row("busy", TINY, G, seed, "completed", 10.0 + G + seed, contended=busy, cpu_util=util,
                                 decode_tokens_per_s=dec, train_tokens_per_s=train, device="CPU: Xeon"))
    return load_runs(tmp_path)


def test_contended_cells_show_their_speed_flagged(runs, tmp_path, capsys):
    t = report.ablation_table(runs).set_index("G")
    assert t.loc[8, "decode_tokens_per_s_median"] == 120.0 and bool(t.loc[8, "throughput_contended"])
    assert t.loc[1, "decode_tokens_per_s_median"] == 300.0 and not bool(t.loc[1, "throughput_contended"])
    assert t.n_contended.to_dict() == {1: 1, 8: 2}
    assert report.main([str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    rows = {r["G"]: r for r in md_table(text, report.TITLES["ablation"])}
    assert rows["8"]["decode tok/s"] == "120 (contended)" and rows["8"]["train tok/s"] == "1,200 (contended)"
    assert rows["1"]["decode tok/s"] == "300 (1 contended left out)"
    assert '"(contended)": every run of the cell shared it' in text  # the reason, in the table's note


def test_the_decode_plot_marks_contended_points_and_says_why(runs):
    table = report.ablation_table(runs)
    fig = plot_decode_vs_g(table, runs)
    ax = fig.axes[0]
    hollow = [ln for ln in ax.lines if ln.get_label() == "contended"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [8]
    assert ax.get_ylim()[1] == pytest.approx(1.08 * 300.0)
    assert "contended (CPU util 15%-48% of their cores)" in fig._supxlabel.get_text()
    assert "contended" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_an_axis_without_any_throughput_says_why(runs):
    table = report.ablation_table(runs).assign(decode_tokens_per_s_median=float("nan"))
    with contextlib.redirect_stderr(io.StringIO()):
        ax = plot_decode_vs_g(table, runs).axes[0]
    assert any("no decode throughput measured" in t.get_text() for t in ax.texts)
