"""The package's structure, measured from its code (the measures of the spec-through-the-run issue): a model
shape is built in one place, the config is resolved only by the planner, no two modules import each other."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gqa_sweep.model.shape import ModelConfig, build_shape, matched_d_ff
from tests.conftest import ROOT, TINY, sweep_env

PACKAGE = ROOT / "gqa_sweep"


def calls_of(name: str, tree: Path = PACKAGE) -> list[str]:
    """`path:line` of every call of `name` (a plain name or an attribute) under `tree`."""
    out = []
    for path in sorted(tree.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                if (f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)) == name:
                    out.append(f"{path.relative_to(tree)}:{node.lineno}")
    return out


def test_a_model_shape_is_built_in_one_place() -> None:
    sites = calls_of("ModelConfig")
    assert len(sites) == 1 and sites[0].startswith("model/shape.py:"), sites


def test_only_the_planner_resolves_the_config() -> None:
    for name in ("resolved", "max_steps_of"):
        where = {site.split(":")[0] for site in calls_of(name)}
        assert where <= {"spec.py", "plan.py"}, (name, where)


CYCLES = (
    "import grimp, sys\n"
    "g = grimp.build_graph('gqa_sweep', cache_dir=None)\n"
    "mods = sorted(g.modules)\n"
    "found = [(a, b) for a in mods for b in g.find_modules_directly_imported_by(a)\n"
    "         if b.startswith('gqa_sweep') and a < b and a in g.find_modules_directly_imported_by(b)]\n"
    "print(found)\n"
)


def circles(tree: Path) -> str:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", CYCLES], cwd=tree, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_no_two_modules_import_each_other(tmp_path) -> None:
    pytest.importorskip("grimp")  # import-linter's graph, in the dev extras
    assert circles(ROOT) == "[]"
    # A circle hidden inside a function (as bench/decode <-> bench/variants once was) is still found.
    shutil.copytree(PACKAGE, tmp_path / "gqa_sweep", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "gqa_sweep" / "model" / "kv_formula.py"
    target.write_text(target.read_text() + "\n\ndef _planted():\n    from gqa_sweep.model import shape\n")
    assert circles(tmp_path) == "[('gqa_sweep.model.kv_formula', 'gqa_sweep.model.shape')]"


# One run, planned and trained, with a profile hook that records every call entering config.py from outside it.
TRACE = """
import collections, json, sys
from hydra import compose, initialize_config_module
from gqa_sweep.run.train import run

with initialize_config_module("gqa_sweep.conf", version_base=None):
    cfg = compose("config", overrides=sys.argv[1:])
sites = collections.Counter()

def hook(frame, event, arg):
    if event == "call" and frame.f_code.co_filename.endswith("gqa_sweep/config.py"):
        back = frame.f_back
        if back is not None and not back.f_code.co_filename.endswith("gqa_sweep/config.py"):
            sites[back.f_code.co_filename.split("gqa_sweep/")[-1] + " -> " + frame.f_code.co_name] += 1

sys.setprofile(hook)
row = run(cfg)
sys.setprofile(None)
print(json.dumps({"status": row["status"], "sites": sorted(sites)}))
"""


def test_the_run_enters_config_py_at_most_three_times(tmp_path) -> None:
    """The spec is built once (plan.check_inputs validates, spec.build_spec identifies); no step of the run goes
    back to the config after that."""
    out = subprocess.run([sys.executable, "-c", TRACE, *TINY, f"results_dir={tmp_path}"], cwd=tmp_path,
                         env=sweep_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    assert result["sites"] == ["plan.py -> validate", "spec.py -> identify"]


BASE = {"vocab_size": 61, "block_size": 32, "n_layers": 2, "d_model": 64, "n_heads": 8, "n_kv_heads": 2}


def test_build_shape_reads_every_kind_of_description() -> None:
    plain = ModelConfig(**BASE)
    assert build_shape(BASE) == plain
    assert build_shape(plain.to_dict()) == plain  # a stored shape (checkpoint, LMModule hyperparameters)
    assert build_shape({**BASE, "name": "tiny", "param_match": "none"}) == plain  # a model group
    assert build_shape(BASE, n_kv_heads=8).n_kv_heads == 8  # overrides win
    assert build_shape({k: v for k, v in BASE.items() if k != "vocab_size"}).vocab_size is None  # the data's
    matched = build_shape({**BASE, "n_kv_heads": 1, "param_match": "ffn"})
    assert matched.d_ff == matched_d_ff(ModelConfig(**{**BASE, "n_kv_heads": 1})) > plain.d_ff


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"n_kv_head": 2}, "unknown model key(s) n_kv_head; the model's keys are vocab_size, block_size"),
        ({"param_match": "attn"}, "param_match='attn'; choose from none, ffn"),
    ],
)
def test_build_shape_refuses_what_is_not_a_shape(extra: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        build_shape({**BASE, **extra})
    assert message in str(e.value)


def test_the_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 20_000, "README.md over 20 KB: move measured tables to docs/results.md"
    head = readme.splitlines()[:40]
    install = "pip install torch==2.13.0 -e . && gqa-sweep -m"
    tests = 'pip install torch==2.13.0 -e ".[dev]" && python -m pytest -q'
    assert any(line.startswith(install) for line in head) and any(line.startswith(tests) for line in head)
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command
