"""The run spec: built once from Hydra's config, frozen, torch-free, and naming the same computations with the
same ids as the versions before it (golden ids of the README's default sweep and of a committed old store)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest
from hydra import compose, initialize_config_dir

from gqa_sweep.plan import spec_of, stored_identity
from gqa_sweep.spec import RunSpec
from tests.conftest import ROOT

# The default sweep in bf16 (`gqa-sweep -m` on a bf16 CPU), ids as the README's quick start printed them
# before the spec existed (f49abcc).
DEFAULT_IDS = {1: "b8b986c38575", 2: "a99dc7568e59", 4: "ec9748c15604", 8: "35d9b3d39330"}
OLD_MQAR = ROOT / "tests" / "data" / "store_bec5dc2_mqar" / "runs.sqlite"


def spec(tmp_path, *overrides: str) -> RunSpec:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return spec_of(compose("config", overrides=[f"results_dir={tmp_path}", *overrides]))


@pytest.mark.parametrize("G", sorted(DEFAULT_IDS))
def test_the_default_sweep_keeps_its_ids(tmp_path, G: int) -> None:
    s = spec(tmp_path, f"model.n_kv_heads={G}", "trainer.precision=bf16-mixed")
    assert (s.run_id, s.name) == (DEFAULT_IDS[G], f"H8-G{G}-s0")


def test_a_committed_old_store_keeps_its_ids() -> None:
    """Each stored row's computation, hashed by this version, is the id this version plans the same job under."""
    with sqlite3.connect(OLD_MQAR) as db:
        rows = db.execute("SELECT run_id, config, precision FROM runs").fetchall()
    assert len(rows) == 2
    for _, config, precision in rows:
        config = json.loads(config)
        ident = stored_identity(json.dumps(config), precision)
        assert ident is not None and len(ident) == 12
        # the same computation planned today: the row's config as a fresh job's resolved config
        from gqa_sweep.plan import planned_config
        from gqa_sweep.spec import build_spec

        config["trainer"]["precision"] = precision
        planned, _ = planned_config(config)
        assert build_spec(planned).run_id == ident


def test_the_spec_is_frozen_and_resolved(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.txt").write_text("To be, or not to be, that is the question. " * 200)
    s = spec(tmp_path, "model.n_kv_heads=2", "data=text", "data.path=data.txt")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.optim["lr"] = 1.0  # type: ignore[index]
    assert s.trainer.precision in ("bf16-mixed", "32-true")  # never auto
    assert s.data["path"] == str(tmp_path / "data.txt") and s.results_dir == str(tmp_path)  # absolute
    assert s.config["data"]["path"] == "data.txt"  # as given: the id does not depend on where it was run
    assert s.model.vocab_size is None and s.model_at(65).vocab_size == 65
    assert s.model.n_kv_heads == 2 and s.max_steps == 300
    assert s.config["model"]["n_kv_heads"] == 2 and "hydra" not in s.config


def test_spellings_of_one_computation_give_one_spec(tmp_path) -> None:
    one = spec(tmp_path, "model.n_kv_heads=[2,2]", "model.n_layers=2")
    two = spec(tmp_path, "model.n_kv_heads=2", "model.n_layers=2")
    assert one.run_id == two.run_id and one.model == two.model and one.model.n_kv_heads == 2
    mla = [spec(tmp_path, "model.attention=mla", f"model.n_kv_heads={G}") for G in (1, 8)]
    assert mla[0].run_id == mla[1].run_id and mla[0].model.n_kv_heads == 8  # MLA has no G


def test_an_uptraining_run_derives_its_steps_and_its_parent(tmp_path) -> None:
    s = spec(tmp_path, "model.n_kv_heads=2", "init.method=mean", "init.parent_steps=100", "init.alpha=0.05")
    assert s.max_steps == 5 and s.init.label == "mha_mean"
    parent = s.parent()
    direct = spec(tmp_path, "model.n_kv_heads=8", "trainer.max_steps=100", f"trainer.precision={s.trainer.precision}")
    assert parent.run_id == direct.run_id and parent.max_steps == 100 and parent.init.method == "scratch"


def test_the_spec_loads_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, gqa_sweep.spec, gqa_sweep.plan; print([m for m in ('torch', 'lightning') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_run_names_tell_ladder_sizes_and_parametrizations_apart(tmp_path) -> None:
    sizes = ("s1", "s2", "s3", "s4", "s5")
    names = [spec(tmp_path, "experiment=ladder", f"ladder={s}", "model.n_kv_heads=1", "data=shakespeare").name
             for s in sizes]
    assert len(set(names)) == 5 and all(n.startswith("H4-G1-s0") and n.endswith(f"-ladder-{s}")
                                        for n, s in zip(names, sizes))
    mup = spec(tmp_path, "model.n_kv_heads=2", "model.parametrization=mup", "model.mup_base_width=64")
    sp = spec(tmp_path, "model.n_kv_heads=2")
    assert (sp.name, mup.name) == ("H8-G2-s0", "H8-G2-s0-mup") and sp.run_id != mup.run_id
