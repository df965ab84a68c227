"""`gqa-bench peak`: the peak FLOP/s this machine's runs take MFU against, per dtype, beside a theoretical bound.

On a GPU with a datasheet figure (which MFU is taken against, the usual convention) the dense-matmul peak is
measured too and shown beside it (measured_GFLOPs, measured_of_datasheet), as rows record it
(`peak_flops_measured`).

The bound is cores x clock x FLOP per cycle per core, the last from the CPU's family/model and flags (an FMA
counts 2 FLOP): Zen 1 16 fp32 (two 128-bit FMA pipes), Zen 2-4 and Intel AVX2 32 (two 256-bit; Zen 4 runs
AVX-512 on them in two halves), Zen 5 (but the mobile parts) and Intel AVX-512 64 (two 512-bit; some Xeon SKUs
have one). bf16: avx512_bf16's dot product does twice the fp32 FMA work per instruction; amx_bf16 1,024 per
cycle (Intel's figure); without either, oneDNN converts to fp32, so fp32's bound holds. The clock is the
cpufreq maximum (`lscpu`'s max MHz) where the kernel exposes it, else /proc/cpuinfo's "cpu MHz" (in a VM often
the nominal clock: a boosting CPU can then beat the bound, and the table says which clock it used).
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import torch

from gqa_sweep.train.metrics import device_name
from gqa_sweep.train.peak import cache_file, cpu_info, measure_peak, measured_peak, peak_of
from gqa_sweep.train.precision import native_bf16


def fp32_per_cycle(info: dict) -> tuple[float, str]:
    """fp32 FLOP per cycle per core and the basis of the figure."""
    flags, vendor = set(info["flags"]), info.get("vendor", "")
    try:
        family, model = int(info["family"]), int(info["model"])
    except (TypeError, ValueError):
        family, model = -1, -1
    if vendor == "AuthenticAMD" or "AMD" in info["model_name"]:
        if family == 23:
            return (16, "Zen/Zen+: 2 x 128-bit FMA") if model < 0x30 else (32, "Zen 2: 2 x 256-bit FMA")
        if family == 25:
            return 32, "Zen 4: AVX-512 on 2 x 256-bit FMA" if "avx512f" in flags else "Zen 3: 2 x 256-bit FMA"
        if family == 26:
            if 0x20 <= model < 0x30:
                return 32, "Zen 5 mobile: AVX-512 on 2 x 256-bit FMA"
            return 64, "Zen 5: 2 x 512-bit FMA"
    if "avx512f" in flags:
        return 64, "AVX-512: 2 x 512-bit FMA assumed (some Xeon SKUs have 1)"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2: 2 x 256-bit FMA"
    return math.nan, "unknown vector units"


def per_cycle(info: dict, dtype: str) -> tuple[float, str]:
    """FLOP per cycle per core in `dtype` and its basis."""
    f32, basis = fp32_per_cycle(info)
    if dtype == "fp32":
        return f32, basis
    if dtype == "bf16":
        if "amx_bf16" in info["flags"]:
            return 1024, "AMX bf16: 1,024 (Intel's figure)"
        if "avx512_bf16" in info["flags"]:
            return 2 * f32, f"avx512_bf16 dot product: 2 x fp32 ({basis})"
        return f32, f"no native bf16: converted to fp32 ({basis})"
    return math.nan, f"no bound for {dtype}"


def clock_mhz(info: dict) -> tuple[float, str]:
    """The clock of the bound and where it was read."""
    try:
        khz = float(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1000, "cpufreq max (lscpu max MHz)"
    except (OSError, ValueError):
        return info["mhz"], "/proc/cpuinfo cpu MHz"


def theoretical(dtype: str, threads: int, info: dict | None = None) -> dict:
    """The bound's parts: cores used (threads, at most the physical cores), clock, FLOP/cycle and the product."""
    info = info or cpu_info()
    cores = min(threads, info["cores"])
    mhz, clock_source = clock_mhz(info)
    fpc, basis = per_cycle(info, dtype)
    return {"bound_GFLOPs": cores * mhz * 1e6 * fpc / 1e9, "cores": cores, "clock_MHz": mhz,
            "clock_source": clock_source, "flop_per_cycle_core": fpc, "basis": basis}  # fmt: skip


def peak_table(device: torch.device, dtypes: list[str], remeasure: bool) -> pd.DataFrame:
    rows = []
    threads = torch.get_num_threads()
    cache = cache_file()
    for dtype in dtypes:
        measured = []

        def measure(dtype=dtype, out=measured):
            out.append(measure_peak(device, dtype))
            return out[-1]

        p = peak_of(device, dtype, remeasure=remeasure, measure=measure, cache=cache)
        row = {"dtype": dtype, "peak_GFLOPs": p.flops / 1e9, "source": p.source, "measured_at": p.measured_at,
               "threads": threads}  # fmt: skip
        if p.source == "datasheet":  # what a dense matmul reaches here, beside the figure MFU is taken against
            q = measured_peak(device, dtype, remeasure=remeasure, measure=measure, cache=cache)
            row |= {"measured_GFLOPs": q.flops / 1e9, "measured_of_datasheet": q.flops / p.flops,
                    "measured_source": q.source, "measured_at": q.measured_at}  # fmt: skip
        if measured:
            m = measured[0]
            row |= {f"{n}²_GFLOPs": v / 1e9 for n, v in m.by_size.items()}
            row |= {"others_cpus": m.others_cpus, "own_share": m.own_share, "state": m.busy or "quiet: cached"}
        else:
            row["state"] = "from the cache"
        if device.type == "cpu":
            bound = theoretical(dtype, threads)
            row |= {"of_bound": p.flops / 1e9 / bound["bound_GFLOPs"], **bound}
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gqa-bench peak", description=__doc__.splitlines()[0])
    p.add_argument("--remeasure", action="store_true", help="measure again (the cache is updated when quiet)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, as a run would use)")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="directory for peak.md and peak.csv")
    a = p.parse_args(argv)
    if a.threads is not None:
        if a.threads < 1:
            print("gqa-bench peak: error: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    df = peak_table(device, a.dtypes, a.remeasure)
    native, why = native_bf16(a.device)
    header = (f"# gqa-bench peak: the peak FLOP/s MFU is taken against\n\ndevice: {device_name(device)} | "
              f"torch: {torch.__version__} | threads: {torch.get_num_threads()} | date: {date.today()} | "
              f"native bf16: {'yes' if native else 'no (' + why + ')'} | cache: {cache_file()}")  # fmt: skip
    notes = ("peak = best of 10 timed square matmuls per size after a warm-up (measured) or the datasheet; a busy "
             "measurement is used by its run only, not cached; bound_GFLOPs = cores x clock_MHz x "
             "flop_per_cycle_core (basis), of_bound = peak / bound. A GPU's MFU is taken against its datasheet "
             "(source datasheet); measured_GFLOPs is the matmul peak measured beside it (measured_of_datasheet = "
             "measured / datasheet).")  # fmt: skip
    body = df.to_markdown(index=False, floatfmt=".4g")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "peak.md").write_text(f"{header}\n\n{notes}\n\n{body}\n")
    df.to_csv(a.out / "peak.csv", index=False)
    print(f"{header}\n\n{body}\nwrote {a.out / 'peak.md'} and {a.out / 'peak.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
