"""The interface every runtime implements.

Executors know nothing of requests: they load a model, describe its tensors,
and run one batch of named arrays synchronously in a worker thread.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from gateway.core.types import TensorSpec

# The rows a batching model takes when model.yaml leaves max_batch_size unset.
DEFAULT_MAX_BATCH_SIZE = 32


def resolve_max_batch_size(configured: int | None, dynamic_batch: bool) -> int:
    """``max_batch_size`` as model.yaml sets it; unset, the default when every tensor the
    caller checks has a dynamic leading dim (the model batches), else 0 (it does not)."""
    if configured is not None:
        return configured
    return DEFAULT_MAX_BATCH_SIZE if dynamic_batch else 0


class Executor(Protocol):
    # As the model file declares them, batch dim included (-1 = dynamic).
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Optional, read with getattr (default False): True when a run's cost may depend on input
    # values, not only sizes (a Loop whose trip count is an input): such a model never runs inline.

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        """Execute one batch; called from a worker thread, never on the event loop."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Abortable(Protocol):
    """Optional for an executor: ``abort()`` stops the run in progress, or the one about to start,
    from another thread (the run then raises); ``rearm()``, called once that run has returned and
    before the next starts, readies the executor for a run no abort has touched. Executors without
    them keep their thread until the run returns by itself."""

    def abort(self) -> None: ...

    def rearm(self) -> None: ...


class ExecutorUnavailableError(RuntimeError):
    """The runtime or device the config asks for is not present on this host."""
