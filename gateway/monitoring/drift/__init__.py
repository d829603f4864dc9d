"""Streaming drift statistics: reference profiles, windows over per-batch histograms, PSI/KS/JSD/chi-square, Page-Hinkley.

Small modules, one job each: ``streams`` (which columns), ``profile`` (reference
bins and counts), ``histograms`` (native per-batch counting), ``window`` (tumbling
and sliding panes), ``stats`` (the statistics), ``judge`` (severity), ``monitor``
(one version's state), ``worker`` (the thread off the response path), ``data``
and ``cli`` (``gateway drift profile``).
"""

from gateway.monitoring.drift.monitor import VersionDrift
from gateway.monitoring.drift.streams import resolve_streams
from gateway.monitoring.drift.worker import DriftWorker

__all__ = ["DriftWorker", "VersionDrift", "resolve_streams"]
