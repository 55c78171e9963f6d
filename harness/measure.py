"""Measurements as the field takes them: peak memory during training, non-padding tokens/s, size on disk.

- CUDA: `torch.cuda.max_memory_allocated` and `max_memory_reserved` after `reset_peak_memory_stats` at the
  start of training (the allocator's figures), and, when pynvml (`pip install nvidia-ml-py`) is there, the
  driver's figure for this process, the one nvidia-smi shows and users compare against (it adds the CUDA context
  and whatever the caching allocator holds): `peak_driver_bytes`, sampled every 0.1 s during training.
  `PYTORCH_CUDA_ALLOC_CONF`, which changes reserved and driver figures, is recorded as `cuda_alloc_conf`.
- CPU: the process's peak resident set size (VmHWM) during training, reset at the start of training through
  /proc/self/clear_refs; it includes the model, optimizer states, activations and the Python process itself.
  Just before the reset, glibc's malloc_trim hands back heap that earlier phases freed but the allocator kept
  (the untuned model's evaluation, earlier runs of an in-process sweep), which the peak would otherwise count
  (0.07-0.3 GiB in standalone bundled-model runs here). `train_begin_mem` records the resident size at that point.
  What the peak still holds beyond live tensors is heap glibc keeps between steps (see harness/estimate/check.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from transformers import TrainerCallback


def _read_vm_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_vm_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def current_memory() -> dict[str, int]:
    """A snapshot: allocated/reserved on CUDA, resident set size on CPU."""
    if torch.cuda.is_available():
        return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}
    return {"rss": psutil.Process().memory_info().rss}


def release_freed_heap() -> int | None:
    """Return freed heap pages to the OS (glibc `malloc_trim(0)`); bytes of resident memory released, None where
    the C library has no malloc_trim (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    before = psutil.Process().memory_info().rss
    trim(0)
    return before - psutil.Process().memory_info().rss


def driver_process_bytes(nvml: Any, device_index: int, pid: int) -> int | None:
    """GPU memory the driver attributes to `pid` on one device (nvidia-smi's "process memory"), None when the
    driver does not report it (e.g. inside some containers)."""
    handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
    for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid and proc.usedGpuMemory is not None:
            return int(proc.usedGpuMemory)
    return None


class DriverMemorySampler:
    """Peak of `driver_process_bytes` over a period, sampled on a thread; inert without pynvml or CUDA."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak, self.nvml = interval, None, None
        self._stop, self._thread = threading.Event(), None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
        except Exception:  # noqa: BLE001 - no pynvml or no driver: the allocator's figures stand alone
            self.nvml = None

    def start(self, device_index: int) -> None:
        if self.nvml is None:
            return
        pid = os.getpid()

        def sample() -> None:
            while True:
                try:
                    used = driver_process_bytes(self.nvml, device_index, pid)
                except Exception:  # noqa: BLE001 - a driver query that fails ends sampling, not the run
                    return
                if used is not None:
                    self.peak = max(self.peak or 0, used)
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> int | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak


class PeakMemory(TrainerCallback):
    """Peak memory between on_train_begin and on_train_end; `result()` gives the result.json fields."""

    def __init__(self) -> None:
        self.peak: dict[str, Any] = {}
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled_peak = 0
        self.train_begin: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.train_begin = current_memory()
            self._driver = DriverMemorySampler()
            self._driver.start(torch.cuda.current_device())
            return
        released = release_freed_heap()
        self.train_begin = current_memory() | {"heap_released": released}
        if not _reset_vm_hwm():  # no /proc: sample RSS instead
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.wait(0.05):
            self._sampled_peak = max(self._sampled_peak, proc.memory_info().rss)

    def on_train_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            driver = self._driver.stop()
            self.peak = {
                "peak_mem_bytes": torch.cuda.max_memory_allocated(),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                "mem_kind": "cuda_allocated",
                "peak_driver_bytes": driver,
                "driver_mem_kind": "nvml_process_used_sampled_0.1s" if driver is not None else None,
                "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
            }
        elif self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self.peak = {"peak_mem_bytes": self._sampled_peak, "peak_reserved_bytes": None, "mem_kind": "cpu_rss_sampled"}
        else:
            self.peak = {"peak_mem_bytes": _read_vm_hwm(), "peak_reserved_bytes": None, "mem_kind": "cpu_rss"}

    def result(self) -> dict[str, Any]:
        return dict(self.peak) | {"train_begin_mem": self.train_begin}


def dir_bytes(path: Path) -> int:
    """Bytes on disk of every file under `path` (what a run saved: adapter or full weights, configs)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


STEP_WARMUP = 2  # the first steps pay for allocator growth and kernel selection; left out of the median


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step (forward, backward, optimizer, that step's data collation)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.times.append(time.perf_counter() - self._start)

    def median(self) -> float | None:
        """Median step time after warm-up (all steps when there are too few to drop any)."""
        steady = self.times[STEP_WARMUP:] or self.times
        return round(statistics.median(steady), 4) if steady else None
