"""The ``drift:`` section of ``model.yaml``: which columns are watched, windows, thresholds.

A *stream* is one watched column: a column of an input (a feature) or of an output
(prediction drift), or the argmax of an output row (the predicted class). Columns
index the row flattened to one dimension. Stream names become metric labels and
MLflow metric names (``drift.<name>.psi``), so they are restricted to
``[A-Za-z0-9_.-]``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STREAM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
# Sliding windows are kept as panes; more than this many per window costs memory for nothing.
MAX_PANES = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_names(names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    for n in names:
        if not STREAM_NAME.match(n):
            raise ValueError(f"'{n}' is not a valid stream name (letters, digits, '_', '.', '-'; at most 128)")
    if len(set(names)) != len(names):
        raise ValueError("names must be unique")
    return names


class _Columns(_Strict):
    # Indices into the row flattened to 1-D; None = every column (the tensor needs a fixed shape).
    columns: tuple[int, ...] | None = None
    # One name per column; default "<tensor>_<column>".
    names: tuple[str, ...] | None = None
    # The values are category codes: compared by category frequency (chi-square), not by quantile bins.
    categorical: bool = False

    @field_validator("columns")
    @classmethod
    def _columns_ok(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("list at least one column, or leave columns out for all")
        if any(c < 0 for c in v):
            raise ValueError("columns must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("columns must be unique")
        return v

    @field_validator("names")
    @classmethod
    def _names_ok(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_names(v)

    @model_validator(mode="after")
    def _names_match(self):
        if self.names is not None:
            if self.columns is None:
                raise ValueError("names needs columns: list the columns the names belong to")
            if len(self.names) != len(self.columns):
                raise ValueError(f"{len(self.names)} names for {len(self.columns)} columns")
        return self


class DriftFeatureConfig(_Columns):
    input: str = Field(min_length=1)


class DriftOutputConfig(_Columns):
    output: str = Field(min_length=1)
    # Watch the predicted class (argmax over the row) as one categorical stream "<output>_argmax".
    argmax: bool = False

    @model_validator(mode="after")
    def _argmax_alone(self):
        if self.argmax and (self.columns is not None or self.names is not None or self.categorical):
            raise ValueError("argmax watches the whole row as one categorical stream: drop columns, names, categorical")
        return self


class DriftWindowConfig(_Strict):
    """Tumbling: judged once per ``size``, then emptied. Sliding: judged every ``step`` over the last ``size``.

    Count-based (``size_rows``/``step_rows``) or time-based on the monotonic clock
    (``size_s``/``step_s``); a time window closes at the first batch or drift-thread
    tick after its end.
    """

    kind: Literal["tumbling", "sliding"] = "tumbling"
    size_rows: int | None = Field(default=None, ge=1, le=100_000_000)
    size_s: float | None = Field(default=None, gt=0, le=30 * 86400)
    step_rows: int | None = Field(default=None, ge=1)
    step_s: float | None = Field(default=None, gt=0)
    # A window with fewer rows than this (a quiet time window) is not judged. Small windows read
    # noise as drift: with 10 bins a stable stream's JS distance is ~sqrt(9 / (8 n)), 0.1 at n = 110.
    # Default: 500, or the window's size when a count window is smaller.
    min_rows: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _shape(self) -> DriftWindowConfig:
        if self.size_rows is not None and self.size_s is not None:
            raise ValueError("set size_rows or size_s, not both")
        by_time = self.size_s is not None
        if not by_time and self.min_rows is not None and self.min_rows > self.rows:
            raise ValueError(f"min_rows ({self.min_rows}) exceeds size_rows ({self.rows}): no window would be judged")
        if self.kind == "tumbling":
            if self.step_rows is not None or self.step_s is not None:
                raise ValueError("a tumbling window has no step (it is its size); use kind: sliding")
            return self
        step = self.step_s if by_time else self.step_rows
        other = self.step_rows if by_time else self.step_s
        unit = "s" if by_time else "rows"
        if other is not None:
            raise ValueError(f"step must be in the size's unit: use step_{unit}")
        if step is None:
            raise ValueError(f"a sliding window needs step_{unit}")
        size = self.size_s if self.size_s is not None else self.rows
        panes = size / step
        if abs(panes - round(panes)) > 1e-9 or round(panes) < 1:
            raise ValueError(f"size_{unit} ({size:g}) must be a whole multiple of step_{unit} ({step:g})")
        if round(panes) > MAX_PANES:
            raise ValueError(f"size/step is {round(panes)}; at most {MAX_PANES} steps per window")
        return self

    @property
    def judged_rows(self) -> int:
        """Rows a window needs to be judged."""
        if self.min_rows is not None:
            return self.min_rows
        return 500 if self.by_time else min(500, self.rows)

    @property
    def by_time(self) -> bool:
        return self.size_s is not None

    @property
    def rows(self) -> int:
        return self.size_rows if self.size_rows is not None else 1000

    @property
    def pane_s(self) -> float | None:
        """Seconds per pane of a time window (its size when tumbling, else its step); None for a count window."""
        if self.size_s is None:
            return None
        step = self.size_s if self.kind == "tumbling" else self.step_s
        assert step is not None  # _shape: a sliding window has a step in its size's unit
        return step

    @property
    def pane_rows(self) -> int | None:
        """Rows per pane of a count window (its size when tumbling, else its step); None for a time window."""
        if self.size_s is not None:
            return None
        step = self.rows if self.kind == "tumbling" else self.step_rows
        assert step is not None  # _shape: a sliding window has a step in its size's unit
        return step

    @property
    def panes(self) -> int:
        if self.kind == "tumbling":
            return 1
        # _shape guarantees a sliding window a step in its size's unit.
        if self.size_s is not None:
            assert self.step_s is not None
            return round(self.size_s / self.step_s)
        assert self.step_rows is not None
        return round(self.rows / self.step_rows)


class UpperThresholds(_Strict):
    """A statistic where larger means more drift; null turns a level off."""

    warning: float | None = Field(default=None, ge=0)
    critical: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.warning is not None and self.critical is not None and self.warning > self.critical:
            raise ValueError(f"warning ({self.warning}) must not exceed critical ({self.critical})")
        return self


class PValueThresholds(_Strict):
    """A test's p-value, where smaller means more drift; null turns a level off."""

    warning: float | None = Field(default=None, ge=0, le=1)
    critical: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.warning is not None and self.critical is not None and self.critical > self.warning:
            raise ValueError(f"critical ({self.critical}) must not exceed warning ({self.warning}) for a p-value")
        return self


class DriftThresholds(_Strict):
    psi: UpperThresholds = UpperThresholds(warning=0.1, critical=0.2)
    # Kolmogorov-Smirnov distance of numeric streams; it only counts when its p-value < ks_alpha.
    ks: UpperThresholds = UpperThresholds(warning=0.1, critical=0.2)
    ks_alpha: float = Field(default=0.05, gt=0, le=1)
    # Jensen-Shannon distance (base 2, in [0, 1]).
    jsd: UpperThresholds = UpperThresholds(warning=0.1, critical=0.2)
    # Chi-square test of categorical streams against the reference counts. Strict by default: every
    # window of every stream is a test, so p < 0.05 would raise a false warning every 20 windows.
    chi2_pvalue: PValueThresholds = PValueThresholds(warning=1e-3, critical=1e-6)


class PageHinkleyConfig(_Strict):
    """Two-sided Page-Hinkley change detector on one column of an output (river's defaults)."""

    output: str = Field(min_length=1)
    column: int = Field(default=0, ge=0)
    delta: float = Field(default=0.005, ge=0)
    threshold: float = Field(default=50.0, gt=0)
    min_instances: int = Field(default=30, ge=1)
    # Forgetting factor of the cumulative sums (1 = none).
    alpha: float = Field(default=0.9999, gt=0, le=1)


class DriftReferenceConfig(_Strict):
    # The profile, beside the version's model file (made by `gateway drift profile`).
    file: str = Field(default="reference.json", min_length=1)
    # > 0: when the version has no profile, build one from the first N rows served and write it.
    capture_rows: int = Field(default=0, ge=0, le=10_000_000)
    # Quantile bins of numeric streams (the two open-ended outer bins come on top).
    bins: int = Field(default=10, ge=2, le=1000)
    # Distinct values kept per categorical stream; rarer ones share the "other" slot.
    max_categories: int = Field(default=100, ge=1, le=10_000)

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in (".", ".."):
            raise ValueError("a file name beside the model file, without directories")
        return v


class DriftConfig(_Strict):
    enabled: bool = True
    features: tuple[DriftFeatureConfig, ...] = ()
    outputs: tuple[DriftOutputConfig, ...] = ()
    window: DriftWindowConfig = DriftWindowConfig()
    thresholds: DriftThresholds = DriftThresholds()
    # Proportion used in place of 0 for an empty bin in PSI (as Evidently: 1e-4); the others need none.
    epsilon: float = Field(default=1e-4, gt=0, lt=0.01)
    page_hinkley: PageHinkleyConfig | None = None
    reference: DriftReferenceConfig = DriftReferenceConfig()
    # Batches waiting for the drift thread; beyond this they are dropped (and counted), never queued without bound.
    queue_batches: int = Field(default=1024, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _something_watched(self) -> DriftConfig:
        if not self.features and not self.outputs and self.page_hinkley is None:
            raise ValueError("list features, outputs or page_hinkley to watch")
        return self

