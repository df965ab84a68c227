"""Helpers shared by the gqa-bench tests: run a subcommand's --quick mode, check the table it writes."""

from __future__ import annotations

import math

import pandas as pd
import torch

from gqa_sweep.bench.cli import main
from gqa_sweep.bench.common import make_env

META = ["device", "dtype", "torch", "date"]


def run_quick(kind: str, tmp_path_factory, *extra: str) -> tuple[pd.DataFrame, str]:
    out = tmp_path_factory.mktemp(kind)
    assert main([kind, "--quick", "--device", "cpu", "--out", str(out), *extra]) == 0
    return pd.read_csv(out / f"{kind}.csv"), (out / f"{kind}.md").read_text()


def assert_finite_positive(df: pd.DataFrame, skip: tuple[str, ...] = ()) -> None:
    numeric = df.select_dtypes("number").drop(columns=list(skip))
    assert numeric.shape[1] > 0
    assert (numeric.map(math.isfinite)).all().all(), numeric
    assert (numeric > 0).all().all(), numeric


def assert_header(df: pd.DataFrame, md: str) -> None:
    assert list(df.columns[-4:]) == META
    name = make_env("cpu", "fp32").device_name
    assert name.startswith("CPU") and df["device"].iloc[0] == name and df["dtype"].iloc[0] == "fp32"
    assert df["torch"].iloc[0] == torch.__version__
    assert f"device: {name} | dtype: fp32 | torch: {torch.__version__}" in md
    assert df["date"].iloc[0] in md
