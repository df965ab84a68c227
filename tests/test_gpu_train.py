"""Training on a GPU, checked on the CPU: the compiled step equals the eager one and has no graph break,
`trainer=gpu` changes only device, precision and kernels, GPU rows leave the CPU contention fields null,
out of memory is a `failed` row that says where, and a run that cannot fit is warned about before it trains."""

from __future__ import annotations

import gc
import math
import subprocess
import textwrap
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gqa_sweep.model.kv import human_bytes
from gqa_sweep.run.fit import fit_warning, memory_floor, warn_if_unfit
from gqa_sweep.run.oom import is_oom, releasing, where_failed
from gqa_sweep.train import gpu
from gqa_sweep.train.callbacks import RunMetrics
from gqa_sweep.train.module import LMModule, z_loss
from tests.conftest import ROOT, TINY, gqa_sweep, sweep_env

MODEL = dict(vocab_size=64, n_layers=1, d_model=32, n_heads=4, n_kv_heads=2, block_size=16)


def batch(seed: int = 0, ignore_every: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(64, (2, 16), generator=g), torch.randint(64, (2, 16), generator=g)
    if ignore_every:
        y[:, ::ignore_every] = -100  # MQAR-style labels: only some positions carry a target
    return x, y


# ------------------------------------------------------------------------------------------------ the step
@pytest.mark.parametrize("z", [0.0, 1e-2])
def test_the_training_loss_is_one_graph_without_breaks(z: float) -> None:
    module = LMModule(MODEL, z_loss=z)
    explained = torch._dynamo.explain(module.losses)(*batch(ignore_every=3))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_z_loss_as_a_mask_equals_the_mean_over_labelled_tokens() -> None:
    logits = torch.randn(32, 64)
    y = torch.randint(64, (32,))
    y[::3] = -100
    assert z_loss(logits, y).item() == pytest.approx(logits[y != -100].logsumexp(-1).pow(2).mean().item(), rel=1e-6)
    assert math.isnan(z_loss(logits, torch.full((32,), -100)).item())  # no labelled token: undefined, as before


def test_compiled_and_eager_training_agree_over_steps(one_thread) -> None:
    """Three AdamW steps through LMModule.training_step, compiled (inductor) and eager, from the same weights:
    the same losses and weights (float rounding apart). The compile takes ~20 s on a busy 2-core CPU."""
    torch.manual_seed(0)
    eager = LMModule(MODEL, z_loss=1e-3, warmup_steps=1, max_steps=3)
    compiled = LMModule(MODEL, z_loss=1e-3, warmup_steps=1, max_steps=3, compile=True)
    compiled.model.load_state_dict(eager.model.state_dict())
    losses = {}
    for name, module in (("eager", eager), ("compiled", compiled)):
        opt = module.configure_optimizers()["optimizer"]
        assert opt.defaults["fused"] is True  # fused AdamW on the CPU (and on CUDA)
        losses[name] = []
        for step in range(3):
            loss = module.training_step(batch(0, ignore_every=5), step)  # one batch: the loss must fall
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[name].append(module.last_loss.item())
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5, abs=1e-6)
    assert losses["eager"][2] < losses["eager"][0]  # it trained: the comparison is not of three constants
    for (name, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


# ------------------------------------------------------------------------------------------------ trainer=gpu
def test_trainer_gpu_changes_only_device_precision_and_kernels() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cpu, gpu_ = (dict(compose("config", overrides=[f"trainer={t}"]).trainer) for t in ("cpu", "gpu"))
        gpt2 = compose("config", overrides=["experiment=gpt2_124m"]).trainer
    changed = {k for k in cpu.keys() | gpu_.keys() if cpu.get(k) != gpu_.get(k)}
    assert changed == {"accelerator", "precision", "compile"}
    assert (gpu_["accelerator"], gpu_["precision"], gpu_["compile"]) == ("gpu", "bf16-mixed", True)
    assert gpu_["max_steps"] == cpu["max_steps"] == 300
    # The longer GPU experiment sets its own schedule, as it did before.
    assert (gpt2.max_steps, gpt2.val_check_interval, gpt2.ckpt_every_n_steps, gpt2.compile) == (5000, 250, 500, True)


# ------------------------------------------------------------------------------------------------ GPU rows
def test_gpu_rows_have_null_cpu_figures_and_say_whether_the_gpu_was_shared() -> None:
    metrics = RunMetrics(tokens_per_step=64, divergence_loss=10.0)
    metrics.cpu_util, metrics.load = 0.06, (1.0, 2.0)
    cuda = torch.device("cuda")
    assert metrics.contention(cuda) == {"cpu_util": None, "load_start": None, "load_end": None, "gpu_others": None,
                                        "contended": None}  # fmt: skip
    metrics.gpu_others = 0
    assert metrics.contention(cuda)["contended"] is False
    metrics.gpu_others = 2
    assert metrics.contention(cuda) == {"cpu_util": None, "load_start": None, "load_end": None, "gpu_others": 2,
                                        "contended": True}  # fmt: skip
    cpu = metrics.contention(torch.device("cpu"))
    assert cpu["cpu_util"] == 0.06 and cpu["gpu_others"] is None and cpu["contended"] is True


def test_compile_time_is_the_first_steps_excess_over_a_timed_step() -> None:
    metrics = RunMetrics(tokens_per_step=64, divergence_loss=10.0)
    assert metrics.compile_s() is None  # never started: as an eager run
    metrics.compiled = True
    assert math.isnan(metrics.compile_s())  # no step timed yet
    metrics._first_step = [100.0, 112.5]
    metrics._timed_s, metrics._timed_steps = 2.0, 40  # 50 ms a step
    assert metrics.compile_s() == pytest.approx(12.45)


def test_others_on_the_gpu_come_from_nvml_else_nvidia_smi() -> None:
    class Proc(SimpleNamespace):
        pass

    calls = []

    class FakeNVML:
        def nvmlInit(self):
            calls.append("init")

        def nvmlShutdown(self):
            calls.append("shutdown")

        def nvmlDeviceGetHandleByPciBusId(self, bus_id):
            assert bus_id == b"00000000:19:00.0"
            return "h"

        def nvmlDeviceGetComputeRunningProcesses(self, handle):
            return [Proc(pid=7), Proc(pid=4242)]

    assert gpu.nvml_processes("00000000:19:00.0", nvml=FakeNVML()) == [7, 4242]
    assert calls == ["init", "shutdown"]

    class Broken(FakeNVML):
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    assert gpu.nvml_processes("00000000:19:00.0", nvml=Broken()) is None
    smi = "4242\n\n  7  \n[N/A]\n"
    assert gpu.parse_smi(smi) == [4242, 7]
    seen = []

    def run(cmd, **kw):
        seen.append(cmd)
        return SimpleNamespace(stdout=smi)

    assert gpu.smi_processes("00000000:19:00.0", run=run) == [4242, 7]
    assert seen[0][:3] == ["nvidia-smi", "-i", "00000000:19:00.0"]

    def fails(cmd, **kw):
        raise subprocess.CalledProcessError(9, cmd)

    assert gpu.smi_processes("0", run=fails) is None
    # This process is one of those listed, whatever PID a container shows for it.
    assert [gpu.others_from(p) for p in ([4242], [4242, 7, 9], [], None)] == [0, 2, None, None]
    assert gpu.others_on_gpu("cpu") is None


# ------------------------------------------------------------------------------------------------ out of memory
def test_out_of_memory_says_where_and_what_to_change() -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    row = {"batch_size": 16, "block_size": 1024, "peak_mem_bytes": 130 * 2**30, "max_steps": 300,
           "error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\nTraceback ..."}  # fmt: skip
    out = where_failed(row, ("train", 11), oom, device_total=141 * 2**30)
    assert (out["failed_phase"], out["failed_step"]) == ("train", 12)  # 11 steps done: the 12th ran out
    first = out["error"].splitlines()[0]
    assert first == ("out of memory in train step 12 (batch 16 x sequence 1024 tokens, 130.00 GiB of 141.00 GiB "
                     "allocated at the peak): lower data.batch_size or data.block_size, or train a smaller model")
    assert "Tried to allocate 2.00 GiB" in out["error"]  # torch's own message stays
    assert where_failed(row, ("validate", 300), oom)["failed_step"] == 300
    after = where_failed(row, None, ValueError("decode"))
    assert after == {"failed_phase": "measure", "failed_step": 300}  # not out of memory: the error is kept as is
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_a_failed_run_gives_its_memory_back() -> None:
    held = []

    def run():
        weights = torch.zeros(1000)
        held.append(weakref.ref(weights))
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError) as caught, releasing():
        run()
    gc.collect()
    assert held[0]() is None  # the traceback no longer keeps the failed run's tensors alive
    assert "run" in "".join(__import__("traceback").format_tb(caught.value.__traceback__))


SITE_OOM = """
    import torch
    from gqa_sweep.train.module import LMModule

    step = LMModule.training_step

    def training_step(self, batch, batch_idx):  # a G=1 run runs out of memory at its third step
        if self.model.cfg.n_kv_heads == 1 and self.trainer.global_step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return step(self, batch, batch_idx)

    LMModule.training_step = training_step
"""


def test_out_of_memory_leaves_a_failed_row_and_the_sweep_goes_on(tmp_path: Path) -> None:
    from gqa_sweep.store.results import load_runs

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITE_OOM))
    env = sweep_env()
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    results = tmp_path / "results"
    proc = gqa_sweep("-m", *TINY, f"results_dir={results}", "model.n_kv_heads=1,2", cwd=tmp_path, env=env)
    assert proc.returncode != 0  # the sweep reports its failed job ...
    runs = load_runs(results).set_index("n_kv_heads")
    assert runs.loc[2, "status"] == "completed" and math.isfinite(runs.loc[2, "val_ppl"])  # ... after the others
    failed = runs.loc[1]
    assert (failed.status, failed.failed_phase, failed.failed_step) == ("failed", "train", 3)
    assert failed.error.startswith("out of memory in train step 3 (batch 4 x sequence 32 tokens, ")
    assert failed.peak_mem_bytes > 0 and failed.error.count("lower data.batch_size") == 1
    assert "out of memory in train step 3" in proc.stderr + proc.stdout  # the log line says it too


# ------------------------------------------------------------------------------------------------ will it fit
def test_the_memory_floor_counts_weights_optimizer_gradients_logits_and_cache() -> None:
    floor = memory_floor(n_params=1000, tokens_per_step=16 * 1024, vocab_size=50, compute_bytes=2, cache_bytes=100)
    assert floor == {"weights + AdamW state": 12_000, "gradients": 4_000, "logits": 16 * 1024 * 50 * 2,
                     "decode cache": 100, "total": 12_000 + 16 * 1024 * 50 * 2}  # fmt: skip
    small_logits = memory_floor(1000, 4, 50, 2, cache_bytes=100)
    assert small_logits["total"] == 16_000 + 100  # at the optimizer step: every gradient exists
    assert fit_warning(floor, floor["total"], "test", 16, 1024) is None
    warning = fit_warning(floor, floor["total"] - 1, "free of 1 GiB on a test GPU", 16, 1024)
    assert "Lower data.batch_size (now 16) or data.block_size (now 1024)" in warning
    assert warning.startswith("this run needs at least 1.57 MiB (weights + AdamW state 11.72 KiB, ")


def test_a_run_that_cannot_fit_is_warned_about_before_training(caplog) -> None:
    from types import SimpleNamespace

    module = LMModule(MODEL)
    cfg = SimpleNamespace(trainer=SimpleNamespace(precision="bf16-mixed"), data={"batch_size": 2, "block_size": 16},
                          metrics={"decode_batch": 2, "decode_prompt_tokens": 4, "decode_new_tokens": 4,
                                   "decode_fill_cache": False})  # fmt: skip
    n = module.model.num_params()
    assert warn_if_unfit(module, cfg, torch.device("cpu"), available=(16 * n + 10**6, "a big one")) is None
    with caplog.at_level("WARNING", logger="gqa_sweep"):
        warning = warn_if_unfit(module, cfg, torch.device("cpu"), available=(16 * n, "a fake 1 MB GPU"))
    assert warning and "a fake 1 MB GPU" in warning and warning in caplog.text
    # The decode cache is the one the run measures: 2 sequences x (4 + 4) tokens x K and V x G=2 x d_head 8 x bf16.
    assert f"decode cache {human_bytes(2 * 8 * 2 * 2 * 8 * 2, binary=True)}" in warning


def test_ce_loss_of_the_module_is_plain_cross_entropy() -> None:
    module = LMModule(MODEL)
    x, y = batch(1)
    ce, total = module.losses(x, y)
    assert ce is total  # no z term: no extra logsumexp
    assert ce.item() == pytest.approx(F.cross_entropy(module.model(x).float().view(-1, 64), y.view(-1)).item())


def test_a_gpu_run_that_shared_its_gpu_is_recorded_and_warned_about(tmp_path: Path, caplog) -> None:
    """A GPU row has no CPU figures to quote: the warning names the other processes instead."""
    from gqa_sweep.run.train import record_run
    from gqa_sweep.store.results import ResultsStore, load_runs

    plan = SimpleNamespace(name="H8-G2-s0", run_id="abc", stored_id=None, store=ResultsStore(tmp_path))
    row = {"run_id": "abc", "status": "completed", "max_steps": 4, "val_loss": 1.0, "val_ppl": math.e,
           "train_tokens_per_s": 1e5, "train_tokens_per_s_p10": 9e4, "train_tokens_per_s_p90": 1.1e5,
           "decode_tokens_per_s": 1e3, "compile_s": 12.3, "cpu_util": None, "load_start": None, "load_end": None,
           "gpu_others": 1, "contended": True}  # fmt: skip
    with caplog.at_level("INFO", logger="gqa_sweep"):
        record_run(plan, row, SimpleNamespace(history=[]), LMModule(MODEL), tmp_path)
    assert "H8-G2-s0 shared its GPU with 1 other process(es): its throughput is not comparable" in caplog.text
    assert "compiled in 12 s (not in tok/s)" in caplog.text
    stored = load_runs(tmp_path).iloc[0]
    assert (stored.contended, stored.gpu_others, stored.compile_s) == (1, 1, 12.3) and stored.cpu_util is None
