"""The precision a run computes in: `trainer.precision=auto` resolved before the run is named.

Torch-free on a CPU (the flags are read from /proc/cpuinfo), so a sweep's plan resolves it in its first second;
only a GPU run asks torch.cuda whether the device has bf16.
"""

from __future__ import annotations

from pathlib import Path

CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return {f for line in lines if line.startswith("flags") for f in line.split(":", 1)[1].split()}


def native_bf16(accelerator: str) -> tuple[bool, str]:
    """Whether the run's device computes bf16 natively (a GPU that supports it; a CPU with avx512_bf16 or
    amx_bf16), and why not. Elsewhere oneDNN emulates bf16 matmuls through fp32, slower than fp32 itself."""
    if accelerator != "cpu":
        import torch  # a GPU's bf16 support is known to CUDA only

        if torch.cuda.is_available():
            ok = torch.cuda.is_bf16_supported()
            return ok, "" if ok else f"{torch.cuda.get_device_name()} has no bf16"
    if not Path("/proc/cpuinfo").exists():
        return False, "this CPU's bf16 support is unknown (no /proc/cpuinfo)"
    found = sorted(cpu_flags() & CPU_BF16_FLAGS)
    return bool(found), "" if found else "this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"


def resolve_precision(precision: str, accelerator: str) -> tuple[str, str]:
    """(the precision used, why `auto` fell back to fp32 or ""): bf16-mixed where native, else 32-true."""
    if str(precision) != "auto":
        return str(precision), ""
    native, why = native_bf16(str(accelerator))
    return ("bf16-mixed", "") if native else ("32-true", why)
