"""The device's peak FLOP/s for MFU: the datasheet figure for known GPUs, else a measured dense-matmul peak.

`measured_peak` measures even where a datasheet figure exists: rows (`peak_flops_measured`) and `gqa-bench peak`
show what a dense matmul reaches on the GPU beside the datasheet MFU is taken against (the usual convention).
A GPU measurement is "busy" (not cached) when another process held the GPU meanwhile (gqa_sweep/train/gpu.py).

CPUs (and GPUs missing from the datasheet table) have no published figure that holds for one machine, so the
peak is measured: the best of 10 timed square matmuls per size (1,024², 2,048², 3,072² on CPU), after a warm-up,
in the run's dtype at the run's thread count. It is cached in `$GQA_SWEEP_CACHE/peak_flops.json` (default
`~/.cache/gqa-sweep/`), keyed by what decides it: the CPU's model name, family/model/stepping and vector flags
(a brand string such as "AMD EPYC" names a Zen 2 and a Zen 5 alike), dtype, thread count and torch version.

A measurement taken while other processes had the cores is used for that run only, never cached: it is
"busy" when other processes (or the hypervisor) took more CPU than the cores this run leaves free, when this
process got under 90 % of its threads' time, or when the two halves of the repeats disagree by over 15 %.
The peak corrects itself: `correct_peak` re-measures when a run's achieved FLOP/s exceeds it, so MFU stays in
(0, 1]; only when even a fresh measurement is below the run's rate is the peak clamped to it, and the source
says so. Sources: datasheet | measured | measured-busy | measured-corrected | measured-corrected-busy |
<source>-clamped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import torch

from gqa_sweep.train.gpu import others_on_gpu
from gqa_sweep.train.metrics import device_name, peak_flops

CACHE_ENV = "GQA_SWEEP_CACHE"
TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "fp64": torch.float64}  # fmt: skip
# The flags that decide which matmul kernels oneDNN/MKL can use, hence the peak.
PEAK_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
CPU_SIZES = (1024, 2048, 3072)
GPU_SIZES = (2048, 4096, 8192)
REPEATS = 10
AGREEMENT = 0.15  # the two halves must agree within this (quiet bf16 on the Zen 5: 5-14 % apart)
OWN_SHARE = 0.90  # this process must get this fraction of its threads' CPU time
WARMUP_S = 0.25  # untimed warm-up per size, at least
MAX_CALL_S = 2.0  # a size whose single matmul would take longer is skipped (slow machines; sizes >= 2,048 kept)


class Peak(NamedTuple):
    """The peak a run's MFU is taken against: FLOP/s, where it came from, when it was measured (ISO, UTC)."""

    flops: float
    source: str
    measured_at: str


@dataclass(frozen=True)
class Measurement:
    flops: float  # best over every size and repeat
    passes: tuple[float, float]  # best of the first and of the second half of the repeats
    by_size: dict[int, float] = field(default_factory=dict)
    others_cpus: float = math.nan  # cores' worth of CPU other processes and the hypervisor took meanwhile
    own_share: float = math.nan  # this process's CPU time / (wall time x threads)
    threads: int = 1
    repeats: int = REPEATS
    load1: float = math.nan  # 1-min load average before (informative: it counts this process's own past work)
    gpu_others: int | None = None  # GPU: most other processes holding it, before or after (None: unknown / CPU)
    busy: str = ""  # why the machine was busy; "" = quiet, cacheable
    measured_at: str = ""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------- identity
def cpu_info(text: str | None = None) -> dict:
    """What decides a CPU's matmul peak, from /proc/cpuinfo: model name, family/model/stepping, peak flags,
    physical cores and the clock it reports ({} fields missing where /proc/cpuinfo is absent)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    info: dict = {"model_name": "", "family": "", "model": "", "stepping": "", "flags": [], "mhz": math.nan}
    cores = set()
    for block in text.strip().split("\n\n"):
        kv = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
        if "processor" not in kv:
            continue
        cores.add((kv.get("physical id", "0"), kv.get("core id", kv["processor"])))
        if not info["model_name"]:  # the first processor speaks for all (a mixed-core CPU shares its flags)
            info.update(model_name=kv.get("model name", ""), family=kv.get("cpu family", ""),
                        model=kv.get("model", ""), stepping=kv.get("stepping", ""), vendor=kv.get("vendor_id", ""),
                        flags=sorted(set(kv.get("flags", "").split()) & set(PEAK_FLAGS)))  # fmt: skip
            with contextlib.suppress(ValueError):
                info["mhz"] = float(kv.get("cpu MHz", "nan"))
    info["cores"] = len(cores) or (os.cpu_count() or 1)
    return info


def cache_key(name: str, dtype: str, device_type: str, info: dict | None = None, threads: int | None = None) -> str:
    """Cache key: device name, dtype, torch version; on CPU also family/model/stepping, flags and threads."""
    key = f"{name}|{dtype}|torch {torch.__version__}"
    if device_type != "cpu":
        return key
    info = cpu_info() if info is None else info
    threads = torch.get_num_threads() if threads is None else threads
    cpu = f"family={info['family']} model={info['model']} stepping={info['stepping']}"
    return f"{key}|{cpu}|flags={','.join(info['flags']) or 'none'}|threads={threads}"


# ----------------------------------------------------------------------------------------------- measuring
def _cpu_clock() -> tuple[float, float]:
    """(seconds of CPU every process and the hypervisor used, summed over cores; this process's CPU seconds)."""
    t = os.times()
    own = t.user + t.system
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return math.nan, own
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"), own


def busy_reason(m: Measurement, cores: int) -> str:
    """Why a measurement should not be trusted beyond its run ("" when the machine was quiet)."""
    free = max(cores - m.threads, 0)
    reasons = []
    if m.others_cpus > free + 0.1:
        reasons.append(f"other processes used {m.others_cpus:.2f} of {cores} cores")
    if m.own_share < OWN_SHARE:
        reasons.append(f"this process got {m.own_share:.0%} of its {m.threads} threads' time")
    if m.gpu_others:
        reasons.append(f"{m.gpu_others} other process(es) held the GPU")
    lo, hi = sorted(m.passes)
    if hi > 0 and (hi - lo) / hi > AGREEMENT:
        reasons.append(f"the two halves of the repeats differ by {(hi - lo) / hi:.0%}")
    return "; ".join(reasons)


def measure_peak(device: torch.device | str, dtype: str, sizes: tuple[int, ...] | None = None,
                 repeats: int = REPEATS, warmup: int = 2) -> Measurement:  # fmt: skip
    """Dense matmul FLOP/s: per size, `warmup` untimed then `repeats` timed (n x n) @ (n x n) products (first
    half of every size, then the second half, so a transient load shows as disagreement); the best is kept."""
    if repeats < 2:
        raise ValueError(f"repeats={repeats}: use >= 2, the two halves of the repeats are compared")
    device = torch.device(device)
    sizes = sizes or (GPU_SIZES if device.type == "cuda" else CPU_SIZES)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    mats, best, halves = {}, {}, [0.0, 0.0]
    guess = 0.0  # FLOP/s of the last warm-up call: how long a larger size would take
    for n in sizes:
        if n > 2048 and guess and 2 * n**3 / guess > MAX_CALL_S:
            break  # too slow a machine for the largest sizes; up to 2,048² is always measured
        a, b = mats[n] = tuple(torch.randn(n, n, device=device, dtype=TORCH_DTYPES[dtype]) for _ in "ab")
        # Warm-up: thread pools, kernel selection, page faults of the output, and the clock ramping up (the
        # first timed half ran 5 % slower than the second on the Zen 5 after 2 calls alone): >= WARMUP_S each.
        t0, calls = time.perf_counter(), 0
        while calls < warmup or (calls and time.perf_counter() - t0 < WARMUP_S):
            t = time.perf_counter()
            a @ b
            sync()
            guess, calls = 2 * n**3 / (time.perf_counter() - t), calls + 1
        best[n] = 0.0
    gpu_others = [others_on_gpu(device)] if device.type == "cuda" else []
    sys0, own0, wall0 = (*_cpu_clock(), time.perf_counter())
    for half in (0, 1):
        for n, (a, b) in mats.items():
            for _ in range(repeats // 2 + (repeats % 2) * (1 - half)):
                t = time.perf_counter()
                a @ b
                sync()
                rate = 2 * n**3 / (time.perf_counter() - t)
                best[n] = max(best[n], rate)
                halves[half] = max(halves[half], rate)
    sys1, own1, wall1 = (*_cpu_clock(), time.perf_counter())
    gpu_others += [others_on_gpu(device)] if device.type == "cuda" else []
    known_others = [n for n in gpu_others if n is not None]
    wall = wall1 - wall0
    m = Measurement(
        flops=max(best.values()), passes=(halves[0], halves[1]), by_size=best, threads=threads, repeats=repeats,
        others_cpus=max((sys1 - sys0) - (own1 - own0), 0.0) / wall if device.type == "cpu" else math.nan,
        own_share=(own1 - own0) / (wall * threads) if device.type == "cpu" else math.nan,
        load1=load1, measured_at=now_iso(), gpu_others=max(known_others) if known_others else None,
    )  # fmt: skip
    cores = cpu_info()["cores"] if device.type == "cpu" else 1
    return replace(m, busy=busy_reason(m, cores))


def measure_matmul_flops(device: torch.device, dtype: str, size: int = 1024, repeats: int = 5) -> float:
    """One size's best FLOP/s (tests and quick looks; a run's peak comes from `measure_peak`)."""
    return measure_peak(device, dtype, sizes=(size,), repeats=repeats).flops


# ----------------------------------------------------------------------------------------------- the cache
def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gqa-sweep"
    return Path(root) / "peak_flops.json"


def read_cache(cache: Path) -> dict:
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def store(cache: Path, key: str, m: Measurement, source: str) -> None:
    """Add one quiet measurement to the cache (write then rename: a parallel reader never sees half a file)."""
    entry = {**asdict(m), "by_size": {str(n): v for n, v in m.by_size.items()}, "source": source}
    known = {**read_cache(cache), key: entry}
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=cache.parent, delete=False, suffix=".tmp") as f:
        json.dump(known, f, indent=1, sort_keys=True, default=float)
    os.replace(f.name, cache)


def cached(cache: Path, key: str) -> Peak | None:
    """The cached peak under `key`; None when absent or in an older format (a bare number: re-measured)."""
    e = read_cache(cache).get(key)
    if not isinstance(e, dict) or not isinstance(e.get("flops"), (int, float)) or not e["flops"] > 0:
        return None
    return Peak(float(e["flops"]), str(e.get("source", "measured")), str(e.get("measured_at", "")))


def _take(cache: Path, key: str, m: Measurement, source: str) -> Peak:
    """A fresh measurement as a Peak: cached when quiet, marked -busy (and not cached) otherwise."""
    if m.busy:
        return Peak(m.flops, f"{source}-busy", m.measured_at)
    store(cache, key, m, source)
    return Peak(m.flops, source, m.measured_at)


# ----------------------------------------------------------------------------------------------- the API
def resolve_peak(name: str, dtype: str, device_type: str, measure: Callable[[], Measurement],
                 cache: Path | None = None, remeasure: bool = False, key: str | None = None) -> Peak:  # fmt: skip
    """The datasheet figure when the device has one, else the cached measurement, else `measure()` (cached only
    when the machine was quiet). remeasure=True measures even when cached."""
    sheet = peak_flops(name, dtype)
    if math.isfinite(sheet):
        return Peak(sheet, "datasheet", "")
    return _measured(name, dtype, device_type, measure, cache, remeasure, key)


def _measured(name: str, dtype: str, device_type: str, measure: Callable[[], Measurement], cache: Path | None,
              remeasure: bool = False, key: str | None = None) -> Peak:  # fmt: skip
    """The cached measurement, else `measure()` (cached when the machine was quiet)."""
    cache = cache or cache_file()
    key = key or cache_key(name, dtype, device_type)
    known = None if remeasure else cached(cache, key)
    return known or _take(cache, key, measure(), "measured")


def correct(peak: Peak, achieved_flops: float, measure: Callable[[], Measurement], cache: Path, key: str) -> Peak:
    """`peak`, or when `achieved_flops` exceeds it, a fresh measurement (cached when quiet), or as a last resort
    the achieved rate itself (source <...>-clamped): the returned peak is never below `achieved_flops`."""
    if not achieved_flops > peak.flops:  # also NaN: nothing achieved, nothing to correct
        return peak
    if peak.source != "datasheet":
        m = measure()
        if m.flops >= achieved_flops:
            return _take(cache, key, m, "measured-corrected")
        if not m.busy and m.flops > peak.flops:
            store(cache, key, m, "measured-corrected")  # still a better bound than the one cached
        peak = Peak(max(m.flops, peak.flops), peak.source, m.measured_at)
    return Peak(float(achieved_flops), f"{peak.source}-clamped", now_iso())


def peak_of(device: torch.device | str, dtype: str, remeasure: bool = False,
            measure: Callable[[], Measurement] | None = None, cache: Path | None = None) -> Peak:  # fmt: skip
    """The peak a run on `device` in `dtype` is taken against (at the current torch thread count)."""
    device = torch.device(device)
    name = device_name(device)
    measure = measure or (lambda: measure_peak(device, dtype))
    return resolve_peak(name, dtype, device.type, measure, cache, remeasure)


def measured_peak(device: torch.device | str, dtype: str, remeasure: bool = False,
                  measure: Callable[[], Measurement] | None = None, cache: Path | None = None) -> Peak:  # fmt: skip
    """The dense-matmul peak measured on `device` in `dtype`, datasheet or not (cached when quiet)."""
    device = torch.device(device)
    measure = measure or (lambda: measure_peak(device, dtype))
    return _measured(device_name(device), dtype, device.type, measure, cache, remeasure)


def correct_peak(device: torch.device | str, dtype: str, achieved_flops: float,
                 measure: Callable[[], Measurement] | None = None, cache: Path | None = None) -> Peak:  # fmt: skip
    """Call after training with the run's achieved model FLOP/s: the peak to divide by, never below it, so
    achieved_flops / peak.flops is in (0, 1]. Re-measures (and updates the cache) when the peak was exceeded."""
    device = torch.device(device)
    measure = measure or (lambda: measure_peak(device, dtype))
    cache = cache or cache_file()
    name = device_name(device)
    peak = resolve_peak(name, dtype, device.type, measure, cache)
    return correct(peak, achieved_flops, measure, cache, cache_key(name, dtype, device.type))


def mfu(achieved_flops: float, peak: Peak) -> float:
    """Model FLOP/s over the peak; NaN when nothing was achieved. In (0, 1] for a peak from correct_peak."""
    if not achieved_flops > 0:
        return math.nan
    return achieved_flops / peak.flops


def device_peak(device: torch.device, dtype: str) -> tuple[float, str]:
    """(peak FLOP/s, source) without correction; runs should call `correct_peak` with their achieved rate."""
    p = peak_of(device, dtype)
    return p.flops, p.source
