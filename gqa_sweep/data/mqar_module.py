"""LightningDataModule for MQAR: cached segments -> seeded single-segment train batches -> per-segment test batches.

Train batches each come from one segment (segments differ in length; no padding is trained on): step s draws
its segment and its B examples from a generator seeded by `seed` alone, so every G sees the same batches in
the same order. The held-out test set is the validation set; its batches carry the segment index, which the
LightningModule uses for per-segment recall accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gqa_sweep.data.common import DataError
from gqa_sweep.data.loader import ResumableLoader
from gqa_sweep.data.mqar import check_mqar, load_or_generate


class SegmentItems(Dataset):
    """Item i = (inputs, labels) of example `rows[i]` of segment `segs[i]`, plus the segment index for test items.

    `shift` (set by ResumableLoader) makes item i the item i + shift.
    """

    def __init__(self, data: list[tuple[torch.Tensor, torch.Tensor]], segs: torch.Tensor, rows: torch.Tensor,
                 with_segment: bool = False) -> None:
        self.data, self.segs, self.rows, self.with_segment = data, segs, rows, with_segment
        self.shift = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        s, r = int(self.segs[i + self.shift]), int(self.rows[i + self.shift])
        x, y = self.data[s]
        return (x[r], y[r], torch.tensor(s)) if self.with_segment else (x[r], y[r])


class MQARDataModule(L.LightningDataModule):
    """`data=mqar`: the same attributes the run reads from CorpusDataModule (name, tokenizer_label,
    vocab_size_actual, sample_prompt), plus `test_segments` for the per-segment metrics."""

    name = "mqar"
    tokenizer_label = "mqar"

    def __init__(self, block_size: int = 64, batch_size: int = 32, seed: int = 0, max_steps: int = 1000,
                 cache_dir: str = "~/.cache/gqa-sweep", num_workers: int = 0, source: str = "mqar",
                 **generator) -> None:  # fmt: skip
        """`generator`: the task's settings, MQAR_DEFAULTS' keys (conf/data/mqar.yaml); any other key is refused."""
        super().__init__()
        self.spec = check_mqar({**generator, "block_size": block_size, "batch_size": batch_size,
                                "max_steps": max_steps})  # fmt: skip
        self.block_size, self.batch_size = int(block_size), int(batch_size)
        self.seed, self.max_steps, self.num_workers = int(seed), int(max_steps), int(num_workers)
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.test_segments = self.spec.test_segments
        self.vocab_size_actual = self.spec.vocab_size
        self.train_data: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- preparation

    def prepare(self) -> None:
        """Generate the segments or load them from the cache; idempotent."""
        if self.train_data is not None:
            return
        arrays, self.cache_path, self.cache_hit = load_or_generate(self.spec, self.cache_dir)

        def pairs(split: str, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return [(torch.from_numpy(arrays[f"{split}_{i}_inputs"]), torch.from_numpy(arrays[f"{split}_{i}_labels"]))
                    for i in range(n)]

        self.train_data = pairs("train", len(self.spec.train_segments))
        self.test_data = pairs("test", len(self.spec.test_segments))

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def train_items(self, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(segment, row) of every training item: steps of B * world items that share one segment."""
        g = torch.Generator().manual_seed(self.seed)
        group = self.batch_size * world_size
        segs = torch.randint(0, len(self.train_data), (self.max_steps,), generator=g).repeat_interleave(group)
        rows = torch.randint(0, self.spec.num_train, (self.max_steps * group,), generator=g)
        return segs, rows

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        dataset = SegmentItems(self.train_data, *self.train_items(world))
        sampler = None
        if world > 1:
            sampler = DistributedSampler(dataset, num_replicas=world, rank=self.trainer.global_rank, shuffle=False)
        return ResumableLoader(dataset, batch_size=self.batch_size, shuffle=False, sampler=sampler,
                               num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """The whole test set, in batches that never mix segments."""
        n = self.spec.num_test
        segs = torch.arange(len(self.test_data)).repeat_interleave(n)
        rows = torch.arange(n).repeat(len(self.test_data))
        batches = [list(range(s * n + i, s * n + min(i + self.batch_size, n)))
                   for s in range(len(self.test_data)) for i in range(0, n, self.batch_size)]
        return DataLoader(SegmentItems(self.test_data, segs, rows, with_segment=True), batch_sampler=batches,
                          num_workers=self.num_workers)

    def sample_prompt(self, batch_size: int, length: int) -> torch.LongTensor:
        """Decode-speed prompts: the first `length` tokens of the first test examples."""
        x = self.test_data[0][0]
        if not 0 < length <= x.shape[1] or not 0 < batch_size <= x.shape[0]:
            raise DataError(f"prompt {batch_size} x {length} does not fit the first MQAR test segment "
                            f"({x.shape[0]} x {x.shape[1]}); lower metrics.decode_batch / decode_prompt_tokens")
        return x[:batch_size, :length].clone()
