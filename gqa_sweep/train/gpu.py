"""Who else holds this run's GPU: the processes with a context on it, from NVML (`nvidia-ml-py`, imported as
`pynvml`) where installed, else from `nvidia-smi`, else unknown.

A GPU run's CPU figures (cpu_util, load) say nothing about its throughput; another process on the same GPU
does. This process holds a context on its GPU whenever it asks (it has allocated there), so the others are
the processes listed minus one. The count does not rely on PIDs: inside a container NVML lists the host's PIDs,
which are not this process's.
"""

from __future__ import annotations

import shutil
import subprocess

import torch

NVIDIA_SMI_TIMEOUT_S = 10


def pci_bus_id(device: torch.device) -> str | None:
    """The device's PCI bus id as NVML and nvidia-smi spell it (00000000:19:00.0): CUDA's device order need not
    be theirs (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER), the bus id is the same for all three."""
    p = torch.cuda.get_device_properties(device)
    if not all(hasattr(p, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        return None
    return f"{p.pci_domain_id:08X}:{p.pci_bus_id:02X}:{p.pci_device_id:02X}.0"


def nvml_processes(bus_id: str, nvml=None) -> list[int] | None:
    """PIDs of the compute processes on the GPU at `bus_id` via NVML; None where NVML is absent or fails."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
        try:
            handle = nvml.nvmlDeviceGetHandleByPciBusId(bus_id.encode() if isinstance(bus_id, str) else bus_id)
            return [p.pid for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        finally:
            nvml.nvmlShutdown()
    except Exception:  # NVMLError and its many subclasses (no driver, no permission, MIG): unknown
        return None


def parse_smi(text: str) -> list[int]:
    """PIDs from `nvidia-smi --query-compute-apps=pid --format=csv,noheader` (blank lines and `[N/A]` skipped)."""
    return [int(line) for line in (raw.strip() for raw in text.splitlines()) if line.isdigit()]


def smi_processes(bus_id: str, run=subprocess.run) -> list[int] | None:
    """PIDs of the compute processes on the GPU at `bus_id` via nvidia-smi; None where it is absent or fails."""
    if shutil.which("nvidia-smi") is None and run is subprocess.run:
        return None
    try:
        out = run(["nvidia-smi", "-i", bus_id, "--query-compute-apps=pid", "--format=csv,noheader"],
                  capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_smi(out.stdout)


def others_on_gpu(device: torch.device | str) -> int | None:
    """How many other processes hold a context on `device` (a CUDA device this process uses); None when
    neither NVML nor nvidia-smi can tell, or they list no process at all (not even this one: e.g. MIG)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    bus_id = pci_bus_id(device) or str(device.index or 0)
    pids = nvml_processes(bus_id)
    if pids is None:
        pids = smi_processes(bus_id)
    return others_from(pids)


def others_from(pids: list[int] | None) -> int | None:
    """Processes besides this one, from the list of every process on the GPU (which includes this one)."""
    return len(pids) - 1 if pids else None
