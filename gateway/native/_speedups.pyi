# Type stub of the compiled module built from native/speedups.pyx (mypy cannot read the .so).
# The signatures are those of its plain-Python twin, gateway/native/reference.py.
import numpy as np

def gather_rows(arrays: list[np.ndarray], out: np.ndarray) -> int: ...
def gather_padded(arrays: list[np.ndarray], out: np.ndarray, pad_value: object) -> int: ...
def split_rows(array: np.ndarray, counts: list[int]) -> list[np.ndarray]: ...
def histogram_update(
    values: np.ndarray,
    columns: np.ndarray,
    edges: np.ndarray,
    n_edges: np.ndarray,
    categorical: np.ndarray,
    counts: np.ndarray,
    missing: np.ndarray,
) -> int: ...
def page_hinkley_update(
    values: np.ndarray, state: np.ndarray, delta: float, threshold: float, min_instances: int, alpha: float
) -> int: ...
