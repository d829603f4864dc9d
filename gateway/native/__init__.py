"""The hot-path functions, chosen in this one place.

The compiled module is required. GATEWAY_NO_EXTENSIONS=1 selects the
plain-Python twin explicitly (for parity tests and debugging); a missing build
without that switch is a start-up error, never a silent slow path.
"""

from __future__ import annotations

import logging
import os

_log = logging.getLogger(__name__)

USING_EXTENSIONS = os.environ.get("GATEWAY_NO_EXTENSIONS", "") not in ("1", "true", "yes")

# Each branch binds the functions from its own module: the two modules are distinct types to a
# checker, and _speedups.pyi declares the compiled one with the signatures of reference.py.
if USING_EXTENSIONS:
    try:
        from gateway.native import _speedups
    except ImportError as exc:  # pragma: no cover - exercised by a broken install
        raise ImportError(
            "gateway's compiled module gateway.native._speedups is missing: build the package "
            "(pip install .) or set GATEWAY_NO_EXTENSIONS=1 to run the slow Python twin on purpose"
        ) from exc
    gather_rows = _speedups.gather_rows
    gather_padded = _speedups.gather_padded
    split_rows = _speedups.split_rows
    histogram_update = _speedups.histogram_update
    page_hinkley_update = _speedups.page_hinkley_update
else:
    from gateway.native import reference

    gather_rows = reference.gather_rows
    gather_padded = reference.gather_padded
    split_rows = reference.split_rows
    histogram_update = reference.histogram_update
    page_hinkley_update = reference.page_hinkley_update

IMPLEMENTATION = "cython" if USING_EXTENSIONS else "python (GATEWAY_NO_EXTENSIONS=1)"


def log_choice() -> None:
    _log.info("hot path implementation: %s", IMPLEMENTATION)
