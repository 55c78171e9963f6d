"""harness.measure: the CPU peak is taken after freed heap went back to the OS, and the record says where
training started from."""

from __future__ import annotations

import os

import psutil
import pytest

from harness import measure


def _rss() -> int:
    return psutil.Process().memory_info().rss


@pytest.mark.skipif(measure.release_freed_heap() is None, reason="C library without malloc_trim")
def test_freed_heap_is_released_before_the_peak_is_reset() -> None:
    # 200k blocks of 2 KB (malloc'd, below the mmap threshold), then one kept block on top of the heap so that
    # free() cannot shrink it by itself: ~400 MB freed but still resident until malloc_trim.
    blocks = [bytearray(2048) for _ in range(200_000)]
    pin = bytearray(2048)
    resident = _rss()
    del blocks
    assert _rss() > resident - 100 * 2**20, "glibc gave the heap back on its own; the test no longer sets it up"
    released = measure.release_freed_heap()
    assert released is not None and released > 300 * 2**20, released
    del pin


def test_train_begin_record_says_what_the_process_held() -> None:
    peak = measure.PeakMemory()
    peak.on_train_begin(None, None, None)
    held = bytearray(64 * 2**20)  # touched: 64 MiB more resident during "training"
    held[::4096] = b"x" * len(held[::4096])
    peak.on_train_end(None, None, None)
    result = peak.result()
    begin = result["train_begin_mem"]
    if result["mem_kind"].startswith("cuda"):
        assert set(begin) == {"allocated", "reserved"}
    else:
        assert begin["rss"] > 0 and "heap_released" in begin
        assert result["peak_mem_bytes"] >= begin["rss"] + 60 * 2**20


def test_driver_figure_is_this_process_on_this_device_and_its_peak() -> None:
    import time
    from types import SimpleNamespace

    from harness.measure import DriverMemorySampler, driver_process_bytes

    readings = iter([100, 300, 200] + [200] * 1000)

    class FakeNvml:  # pynvml's calls the sampler makes, answering for two processes
        @staticmethod
        def nvmlDeviceGetHandleByIndex(index):
            return f"gpu{index}"

        @staticmethod
        def nvmlDeviceGetComputeRunningProcesses(handle):
            assert handle == "gpu1"
            return [SimpleNamespace(pid=1, usedGpuMemory=999), SimpleNamespace(pid=os.getpid(), usedGpuMemory=next(readings))]

    assert driver_process_bytes(FakeNvml, 1, 12345) is None  # a process the driver does not list
    sampler = DriverMemorySampler(interval=0.001)
    sampler.nvml = FakeNvml
    sampler.start(1)
    time.sleep(0.2)
    assert sampler.stop() == 300
    inert = DriverMemorySampler()
    inert.nvml = None
    inert.start(0)
    assert inert.stop() is None
