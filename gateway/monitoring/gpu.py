"""GPU memory and utilisation through NVML, sampled when /metrics is scraped.

Without an NVIDIA driver (no libnvidia-ml) the sampler reports why once and
yields nothing; the rest of the metrics are unaffected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

_log = logging.getLogger(__name__)


class GpuSampler:
    def __init__(self) -> None:
        self.devices: list[tuple[str, str, object]] = []  # (index, name, handle)
        self.unavailable_reason = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(handle)
                self.devices.append((str(i), name.decode() if isinstance(name, bytes) else name, handle))
            self._nvml = pynvml
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
            self.unavailable_reason = f"{type(exc).__name__}: {exc}"
            self._nvml = None
        if self.devices:
            _log.info("GPU metrics from NVML: %s", ", ".join(f"{i}={n}" for i, n, _ in self.devices))
        else:
            _log.info("no GPU metrics: %s", self.unavailable_reason or "NVML found no device")

    def collect(self) -> Iterator[Metric]:
        if not self.devices:
            return
        nvml = self._nvml
        used = GaugeMetricFamily("gateway_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu", "name"])
        total = GaugeMetricFamily("gateway_gpu_memory_total_bytes", "GPU memory in total (NVML)", labels=["gpu", "name"])
        util = GaugeMetricFamily(
            "gateway_gpu_utilization_ratio", "fraction of the last sample period a kernel ran (NVML)", labels=["gpu", "name"]
        )
        for index, name, handle in self.devices:
            try:
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            except nvml.NVMLError as exc:
                _log.debug("NVML read of GPU %s failed: %s", index, exc)
                continue
            used.add_metric([index, name], float(mem.used))
            total.add_metric([index, name], float(mem.total))
            util.add_metric([index, name], rates.gpu / 100.0)
        yield used
        yield total
        yield util

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None
