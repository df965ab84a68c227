"""Training reads: a batch is a pure function of (seed, step, rank), windows sliced from memory-mapped shards.

Step s draws the starts of its B * W windows (W ranks) from a counter-based generator (Philox keyed on seed
and s), so nothing of size max_steps exists, any step can be computed without the ones before it, a resume needs
only the step, and every G of a sweep (same seed) trains on the same windows in the same order. Rank r takes
windows r, r + W, ...: step s under DDP trains on the windows of step s on one device with batch B * W.
"""

from __future__ import annotations

from itertools import islice

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from gqa_sweep.data.shards import TokenStream


def step_starts(seed: int, step: int, count: int, high: int) -> np.ndarray:
    """`count` window starts in [0, high) for one global step: Philox(key = seed, step), no state."""
    gen = np.random.Generator(np.random.Philox(key=(int(seed) << 64) | int(step)))
    return gen.integers(0, high, size=count, dtype=np.int64)


def even_offsets(n_tokens: int, length: int, count: int) -> torch.Tensor:
    """`count` window starts evenly spaced so that every window of `length` tokens fits in `n_tokens`."""
    return torch.linspace(0, n_tokens - length, count).round().long()


class StepBatches(Dataset):
    """Item s = this rank's (x, y) batch of step s, each (B, block_size) int64; y is x shifted by one.

    `shift` (set by ResumableLoader) makes item i the batch of step i + shift.
    """

    def __init__(self, stream: TokenStream, block_size: int, batch_size: int, steps: int, seed: int,
                 world: int = 1, rank: int = 0) -> None:
        self.stream, self.block_size, self.batch_size = stream, block_size, batch_size
        self.steps, self.seed, self.world, self.rank = steps, seed, world, rank
        self.high = len(stream) - block_size  # exclusive: the last window ends at the last token
        self.shift = 0

    def __len__(self) -> int:
        return self.steps

    def starts(self, step: int) -> np.ndarray:
        return step_starts(self.seed, step, self.batch_size * self.world, self.high)[self.rank :: self.world]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(self.stream.windows(self.starts(i + self.shift), self.block_size + 1))
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()  # the loss views y flat


class EveryStep(DistributedSampler):
    """Steps 0, 1, ... in order on every rank (each rank's item s is already its own part of step s).

    A DistributedSampler only so that Lightning keeps it: under DDP Lightning replaces any other sampler with a
    shuffling DistributedSampler, which would hand each rank a shuffled subset of the steps.
    """

    def __init__(self, dataset: Dataset, world: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False)

    def __iter__(self):
        return iter(range(len(self.dataset)))

    def __len__(self) -> int:
        return len(self.dataset)


class WindowDataset(Dataset):
    """(x, y) windows of `block_size` tokens at fixed starts (validation)."""

    def __init__(self, stream: TokenStream, offsets: torch.Tensor, block_size: int) -> None:
        self.stream, self.offsets, self.block_size = stream, offsets, block_size

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(self.stream.window(int(self.offsets[i]), self.block_size + 1))
        return w[:-1], w[1:]


class ResumableLoader(DataLoader):
    """A DataLoader whose position goes into Lightning checkpoints (the `state_dict`/`load_state_dict` protocol).

    Lightning restores the epoch's batch index on resume but restarts a plain loader from its first batch, so
    a resumed run would see its first batches twice. Here the next pass starts at the saved batch instead, on
    every rank. A loader of step batches (batch_size=None) shifts its dataset by the step; an item loader (MQAR)
    with a non-shuffling DistributedSampler shifts by batches * batch_size * W, which continues each rank's own
    sequence. The loader has a length, so Lightning does not prefetch from it and the count is the number of
    batches actually trained on.
    """

    _position = 0  # batches handed out in the current pass
    _resume_at = 0  # batch to start the next pass at (from a checkpoint)

    def state_dict(self) -> dict[str, int]:
        return {"batches": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = int(state["batches"])

    def __iter__(self):
        start, self._resume_at = self._resume_at, 0
        per = 1 if self.batch_size is None else self.batch_size * getattr(self.sampler, "num_replicas", 1)
        # (a step loader's EveryStep sampler has num_replicas too, but its items are whole steps: shift by steps)
        self.dataset.shift = start * per
        self._position = start
        for batch in islice(super().__iter__(), len(self) - start):  # the rest of the pass, then stop
            self._position += 1
            yield batch
