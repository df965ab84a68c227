"""Resume and DDP, torchtitan-style: a run resumed in a fresh process sees exactly the batches of an uninterrupted
run (torch.equal); two real gloo processes see the global batches of one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from gqa_sweep.data import CorpusDataModule

ROOT = Path(__file__).parents[1]

def fit(cache: str, ckdir: str, steps: int, resume: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Train a tiny model for `steps` (from `resume` when given), checkpointing every step; the batches seen."""
    import lightning as L

    from gqa_sweep.train.module import LMModule

    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((batch[0].clone(), batch[1].clone()))

    torch.manual_seed(0)
    dm = CorpusDataModule(block_size=8, batch_size=2, max_steps=6, val_batches=1, cache_dir=cache, progress=False)
    dm.prepare()
    model = {"vocab_size": dm.vocab_size_actual, "block_size": 8, "n_layers": 1, "d_model": 16, "n_heads": 2,
             "n_kv_heads": 1}
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckdir, save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, callbacks=[Record(), ckpt],
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(LMModule(model, max_steps=6, warmup_steps=1), datamodule=dm, ckpt_path=resume)
    return seen


RESUME = """
import sys, torch
from tests.test_data_resume import fit
torch.save(fit(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]), sys.argv[5])
"""


@pytest.mark.filterwarnings("ignore")
def test_resume_in_a_fresh_process_sees_the_uninterrupted_batches(tmp_path):
    cache = str(tmp_path / "cache")
    full = fit(cache, str(tmp_path / "full"), 6)
    part = fit(cache, str(tmp_path / "part"), 3)  # checkpoints every step, ends at step 3
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-c", RESUME, cache, str(tmp_path / "part"), "6",
                        str(tmp_path / "part" / "last.ckpt"), str(tmp_path / "rest.pt")],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    rest = torch.load(tmp_path / "rest.pt")  # a new process, resumed from the checkpoint file
    assert len(full) == 6 and len(part) == 3 and len(rest) == 3
    for (xa, ya), (xb, yb) in zip(full, part + rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _rank(rank: int, world: int, port: int, cache: str, out: str) -> None:
    from types import SimpleNamespace

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    dm = CorpusDataModule(block_size=8, batch_size=2, max_steps=4, cache_dir=cache, progress=False)
    dm.prepare()
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    steps = []
    for x, _ in dm.train_dataloader():
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        steps.append(torch.stack(parts, 1).reshape(-1, x.shape[1]))  # rank r holds global windows r, r + W, ...
    if rank == 0:
        torch.save(steps, out)
    dist.destroy_process_group()


def test_two_gloo_processes_see_the_single_process_global_batches(tmp_path):
    single = CorpusDataModule(block_size=8, batch_size=4, max_steps=4, cache_dir=str(tmp_path / "cache"),
                              progress=False)
    single.prepare()  # also fills the cache the two ranks then share
    ref = [x for x, _ in single.train_dataloader()]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imports (spawn would re-import torch and Lightning in each)
    mp.start_processes(_rank, args=(2, port, str(tmp_path / "cache"), str(tmp_path / "ddp.pt")), nprocs=2, join=True,
                       start_method="fork")
    got = torch.load(tmp_path / "ddp.pt")
    assert len(got) == 4 and all(torch.equal(a, b) for a, b in zip(ref, got))
