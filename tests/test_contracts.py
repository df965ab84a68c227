"""The package's layers hold (import-linter), and the contracts are real: an upward import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

LINT = shutil.which("lint-imports")
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is in the dev extras")


def lint(tree) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    return subprocess.run([LINT, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_every_contract() -> None:
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # config importing the run (what config.validate once did for MQAR): upward and pulls torch in
        ("config.py", "from gqa_sweep.run import train", ("gqa_sweep.config is not allowed to import gqa_sweep.run",
                                                              "gqa_sweep.config is not allowed to import torch")),
        # the run importing the sweep (train.py once read the sweep's job count from it)
        ("run/build.py", "import gqa_sweep.sweep", ("gqa_sweep.run is not allowed to import gqa_sweep.sweep",
                                                    "gqa_sweep.run.build -> gqa_sweep.sweep")),
        # model and data are independent
        ("model/transformer.py", "import gqa_sweep.data.text", ("gqa_sweep.model is not allowed to import gqa_sweep.data",)),
    ],
)
def test_an_upward_import_breaks_a_contract(tmp_path, module: str, line: str, broken: tuple[str, ...]) -> None:
    shutil.copytree(ROOT / "gqa_sweep", tmp_path / "gqa_sweep", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "gqa_sweep" / module
    target.write_text(target.read_text() + f"\n{line}  # planted\n")
    out = lint(tmp_path)
    assert out.returncode == 1
    for text in broken:
        assert text in out.stdout, out.stdout


def test_config_and_plan_load_no_torch() -> None:
    code = (
        "import sys, gqa_sweep.config, gqa_sweep.plan, gqa_sweep.model.shape, gqa_sweep.model.kv, gqa_sweep.store.results; "
        "print([m for m in ('torch', 'lightning') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in the dev extras")
def test_ruff_passes() -> None:
    out = subprocess.run(["ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout
