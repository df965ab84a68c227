"""Multi-query associative recall (MQAR), the synthetic recall task of Zoology (Arora et al. 2023, arXiv 2312.04927).

The algorithm mirrors Zoology's `multiquery_ar` (HazyResearch/zoology, zoology/data/multiquery_ar.py). One example
of length `seq_len` with K = `num_kv_pairs`:

    positions 0 .. 2K-1     the context  k1 v1 k2 v2 ... kK vK; keys drawn without replacement from
                            {1 .. V/2 - 1}, values without replacement from {V/2 .. V-1}
    positions 2K .. T-1     T/2 - K slots of two tokens; each key is queried once, at the first token of the
                            slot `gap`, gaps drawn without replacement with p(gap = i - 1) ~ i^(a - 1), a = 0.01
                            (most queries sit close to the context, as repeated bigrams do in real text)
    everything else         filler: 0, or with `random_non_queries` uniform tokens from the whole vocabulary

Labels are -100 (ignored by the loss) everywhere except at a queried key, whose label is its value: the model
must predict the value right after reading the key again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gqa_sweep.data.common import DataError, atomic_dir

IGNORE = -100  # the label of every position that is not a query (F.cross_entropy's ignore_index)
MQAR_FORMAT = 1  # bump when the generated data or its cache layout changes
TRAIN, TEST = 0, 1  # the split is part of every segment's seed: train and test streams never coincide


@dataclass(frozen=True)
class Segment:
    """A block of examples that share (seq_len, num_kv_pairs)."""

    seq_len: int
    num_kv_pairs: int

    @property
    def label(self) -> str:
        return f"T{self.seq_len}-K{self.num_kv_pairs}"


def check_segment(seg: Segment, vocab_size: int, where: str) -> None:
    """The constraints of the generator, each reported in one line that names the fix."""
    T, K, V = seg.seq_len, seg.num_kv_pairs, vocab_size
    if T <= 0 or K <= 0:
        raise DataError(f"{where}: seq_len={T} and num_kv_pairs={K} must be positive integers")
    if T % 2:
        raise DataError(f"{where}: seq_len={T} is odd; queries take two-token slots, use an even seq_len, "
                        f"e.g. {T + 1}")
    if 4 * K > T:
        raise DataError(f"{where}: 4 * num_kv_pairs = {4 * K} > seq_len={T} (the context takes 2K tokens and the "
                        f"K queries another 2K); use num_kv_pairs <= {T // 4} or seq_len >= {4 * K}")
    if K > V // 2 - 1:
        raise DataError(f"{where}: num_kv_pairs={K} > V/2 - 1 = {V // 2 - 1} distinct keys of data.vocab_size={V}; "
                        f"use data.vocab_size>={2 * K + 2}")
    if V <= T:
        raise DataError(f"data.vocab_size={V} must exceed seq_len={T} ({where}); use data.vocab_size>={T + 1}")


def power_law(space: int, power_a: float) -> np.ndarray:
    """p(gap = i - 1) proportional to i^(a - 1), i = 1 .. space."""
    p = np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    return p / p.sum()


def multiquery_ar(
    vocab_size: int,
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    seed: int | tuple[int, ...],
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels), both (num_examples, seq_len) int64; labels are IGNORE except at queries."""
    check_segment(Segment(seq_len, num_kv_pairs), vocab_size, "mqar")
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    N, T, K, half = num_examples, seq_len, num_kv_pairs, vocab_size // 2
    context = 2 * K
    space = (T - context) // 2
    p = power_law(space, power_a)

    keys = np.empty((N, K), np.int64)
    values = np.empty((N, K), np.int64)
    gaps = np.empty((N, K), np.int64)
    for i in range(N):  # without replacement per example: one draw each (a per-row loop, as Zoology's)
        keys[i] = rng.choice(np.arange(1, half), size=K, replace=False)
        values[i] = rng.choice(np.arange(half, vocab_size), size=K, replace=False)
        gaps[i] = rng.choice(space, size=K, replace=False, p=p)

    inputs = np.zeros((N, T), np.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    query_pos = context + 2 * gaps  # the query of key j sits at the first token of its slot
    np.put_along_axis(inputs, query_pos, keys, axis=1)
    labels = np.full((N, T), IGNORE, np.int64)
    np.put_along_axis(labels, query_pos, values, axis=1)
    if random_non_queries:
        filler = inputs == 0  # keys >= 1 and values >= V/2, so 0 marks exactly the unused positions
        inputs[filler] = rng.integers(0, vocab_size, size=int(filler.sum()))
    return inputs, labels


@dataclass(frozen=True)
class MQARSpec:
    """Everything that decides the generated data (and so the cache key)."""

    vocab_size: int
    train_segments: tuple[Segment, ...]
    test_segments: tuple[Segment, ...]
    num_train: int
    num_test: int
    power_a: float
    random_non_queries: bool
    gen_seed: int

    def seed_of(self, split: int, index: int) -> tuple[int, int, int]:
        return (self.gen_seed, split, index)

    def cache_key(self) -> str:
        settings = {"format": MQAR_FORMAT, **asdict(self)}
        return "mqar-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def segments_of(value, default: Segment, key: str) -> tuple[Segment, ...]:
    """`[[seq_len, num_kv_pairs], ...]` from the config (null: the single default segment)."""
    if value is None:
        return (default,)
    try:
        segs = tuple(Segment(int(t), int(k)) for t, k in value)
    except (TypeError, ValueError):
        raise DataError(f"data.{key}={value} must be a list of [seq_len, num_kv_pairs] pairs, "
                        f"e.g. data.{key}=[[64,4],[128,8]]") from None
    if not segs:
        raise DataError(f"data.{key} is empty; give at least one [seq_len, num_kv_pairs] pair or null")
    return segs


MQAR_DEFAULTS = {"vocab_size": 8192, "seq_len": 64, "num_kv_pairs": 4, "train_segments": None, "test_segments": None,
                 "num_train": 20_000, "num_test": 1_000, "power_a": 0.01, "random_non_queries": True, "gen_seed": 0}


# The data group's other keys: batching (MQARDataModule's own arguments) and the planner's allow_repeats switch.
BATCH_KEYS = ("source", "block_size", "batch_size", "seed", "max_steps", "cache_dir", "num_workers", "allow_repeats")


def spec_of(d: dict) -> MQARSpec:
    """The MQAR spec of a data config (`data=mqar` keys, defaults as conf/data/mqar.yaml); a key that is neither
    the task's nor the batching's is refused by name."""
    unknown = sorted(set(d) - set(MQAR_DEFAULTS) - set(BATCH_KEYS))
    if unknown:
        raise DataError(f"data.{unknown[0]} is not a setting of data=mqar; its settings are "
                        f"{', '.join(list(MQAR_DEFAULTS) + list(BATCH_KEYS))}")  # fmt: skip
    d = {**MQAR_DEFAULTS, **{k: v for k, v in d.items() if k in MQAR_DEFAULTS}}
    default = Segment(int(d["seq_len"]), int(d["num_kv_pairs"]))
    return MQARSpec(
        vocab_size=int(d["vocab_size"]),
        train_segments=segments_of(d["train_segments"], default, "train_segments"),
        test_segments=segments_of(d["test_segments"], default, "test_segments"),
        num_train=int(d["num_train"]),
        num_test=int(d["num_test"]),
        power_a=float(d["power_a"]),
        random_non_queries=bool(d["random_non_queries"]),
        gen_seed=int(d["gen_seed"]),
    )


def check_mqar(d: dict) -> MQARSpec:
    """Every MQAR constraint of a data config, torch-free, before anything is generated or trained."""
    s = spec_of(d)
    for key, segs in (("train_segments", s.train_segments), ("test_segments", s.test_segments)):
        for seg in segs:
            check_segment(seg, s.vocab_size, f"data.{key} {[seg.seq_len, seg.num_kv_pairs]}")
    longest = max(seg.seq_len for seg in s.train_segments + s.test_segments)
    block = int(d.get("block_size", 64))
    if block < longest:
        raise DataError(f"data.block_size={block} is shorter than the longest MQAR segment "
                        f"({longest} tokens); set data.block_size={longest}")
    for key in ("num_train", "num_test"):
        if getattr(s, key) <= 0:
            raise DataError(f"data.{key}={getattr(s, key)} must be a positive integer")
    if not s.power_a > 0:
        raise DataError(f"data.power_a={s.power_a} must be > 0 (Zoology uses 0.01)")
    for key in ("batch_size", "max_steps"):
        v = d.get(key, 1)
        if not isinstance(v, int) or v <= 0:
            raise DataError(f"data.{key}={v} must be a positive integer")
    return s


def generate(spec: MQARSpec) -> dict[str, np.ndarray]:
    """Arrays `{split}_{i}_inputs` / `{split}_{i}_labels` for every segment, as int16/int32 to keep caches small."""
    dtype = np.int16 if spec.vocab_size <= 1 << 15 else np.int32
    out = {}
    for split, name, segs, n in ((TRAIN, "train", spec.train_segments, spec.num_train),
                                 (TEST, "test", spec.test_segments, spec.num_test)):
        for i, seg in enumerate(segs):
            x, y = multiquery_ar(spec.vocab_size, n, seg.seq_len, seg.num_kv_pairs, spec.seed_of(split, i),
                                 spec.power_a, spec.random_non_queries)
            out[f"{name}_{i}_inputs"], out[f"{name}_{i}_labels"] = x.astype(dtype), y.astype(dtype)
    return out


def load_or_generate(spec: MQARSpec, cache_dir: Path) -> tuple[dict[str, np.ndarray], Path, bool]:
    """The generated arrays, from `cache_dir/<key>/` when there (parallel jobs share it safely)."""
    path = cache_dir / spec.cache_key()
    hit = (path / "meta.json").exists()
    if not hit:
        arrays = generate(spec)

        def build(d: Path) -> None:
            np.savez(d / "data.npz", **arrays)
            (d / "meta.json").write_text(json.dumps({"name": "mqar", **asdict(spec)}, indent=1))

        atomic_dir(path, build)
    with np.load(path / "data.npz") as z:
        return {k: z[k].astype(np.int64) for k in z.files}, path, hit
