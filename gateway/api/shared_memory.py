"""System shared-memory regions that same-host clients register (Triton's shared-memory extension).

A region is a window ``[offset, offset + byte_size)`` of a POSIX shared-memory object
(``shm_open(key)``, i.e. ``/dev/shm/<key>``), registered under a name and mapped once. Inputs that
name a region are read from it, requested outputs that name one are written into it, so the
tensor bytes never cross the socket.

Lifetime. Inputs are zero-copy: the request holds a numpy view of the mapping. An output's window
is taken when the request is decoded (bounds checked before the model runs) and held until the
output is written. Unregistering frees the name at once and closes the mapping; while a request in
flight still holds a view, Python's mmap refuses to close (``BufferError``), so the region is kept
aside, still mapped, and closed by a later registry call once the views are gone. Unregistering
under a running request therefore never leaves it touching unmapped memory (its outputs still land
in the region, as with Triton), and costs no copy on the common path.

Truncation. The object's size is checked at every use: a client that shrank its object after
registering gets an INVALID_ARGUMENT instead of the SIGBUS that touching the missing pages would
raise. A same-host process that truncates an object *while* the model reads it can still fault
the process, as with Triton: this is a same-host trust feature, off unless ``allow_client_shm``.

The registry is per process: with ``--workers N`` each worker has its own, and a client must
register on the connection it then infers on (a new connection may land on another worker).

Every call here is bookkeeping or a syscall on tmpfs (open with ``O_NONBLOCK | O_NOFOLLOW``,
``fstat``, ``mmap``): nothing blocks the event loop.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass

import numpy as np

from gateway.core import datatypes, tensors
from gateway.core.errors import (
    AlreadyExistsError,
    InvalidInputError,
    PermissionDeniedError,
    SharedMemoryNotFoundError,
    TooManyRequestsError,
)

SHM_DIR = "/dev/shm"
# Each region is one mapping (one kernel VMA); the default vm.max_map_count is 65530.
MAX_REGIONS = 1024
_MAX_KEY = 255


@dataclass(frozen=True, slots=True)
class ShmRef:
    """Where one tensor lives: ``byte_size`` bytes at ``offset`` within a registered region."""

    region: str
    byte_size: int
    offset: int = 0


class Region:
    """One registered window of a shared-memory object, mapped read-write."""

    __slots__ = ("name", "key", "offset", "byte_size", "_fd", "_map", "_start")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, fd: int, mapping: mmap.mmap, start: int):
        self.name, self.key, self.offset, self.byte_size = name, key, offset, byte_size
        self._fd = fd  # kept for the size check at each use
        self._map = mapping
        self._start = start  # where the window starts within the (page-aligned) mapping

    def status(self) -> dict[str, int | str]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}

    def window(self, ref: ShmRef, what: str) -> memoryview:
        """The ``ref.byte_size`` bytes at ``ref.offset``, bounds-checked, as a writable view of the mapping."""
        if ref.offset >= self.byte_size and not (ref.offset == 0 and ref.byte_size == 0):
            raise InvalidInputError(
                f"{what}: shared_memory_offset {ref.offset} is outside region '{self.name}' ({self.byte_size} bytes)"
            )
        if ref.offset + ref.byte_size > self.byte_size:
            raise InvalidInputError(
                f"{what}: shared_memory_offset {ref.offset} + shared_memory_byte_size {ref.byte_size} "
                f"exceeds region '{self.name}' ({self.byte_size} bytes)"
            )
        self._check_size(what)
        start = self._start + ref.offset
        return memoryview(self._map)[start : start + ref.byte_size]

    def _check_size(self, what: str) -> None:
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise InvalidInputError(f"{what}: shared memory region '{self.name}' cannot be checked: {exc.strerror}") from None
        if size < self.offset + self.byte_size:
            raise InvalidInputError(
                f"{what}: shared memory object '{self.key}' of region '{self.name}' shrank to {size} bytes "
                f"since it was registered (needs {self.offset + self.byte_size}); register it again"
            )

    def close(self) -> bool:
        """Unmap and close; False while a request in flight still views the mapping (try again later)."""
        try:
            self._map.close()
        except BufferError:
            return False
        os.close(self._fd)  # only now: a request writing its output still checks the size through it
        return True


@dataclass(frozen=True, slots=True)
class OutputWindow:
    """Where one requested output goes, taken at decode time; holding it keeps the region mapped."""

    region: Region
    ref: ShmRef
    view: memoryview

    def write(self, array: np.ndarray, what: str) -> int:
        """Copy the output tensor, in the v2 raw layout, into the window; returns the bytes written."""
        raw = _raw_view(array)
        size = len(raw)
        if size > self.ref.byte_size:
            raise InvalidInputError(
                f"{what}: shared_memory_byte_size {self.ref.byte_size} is too small for the output, which needs {size} bytes"
            )
        self.region._check_size(what)
        self.view[:size] = raw
        return size


def _object_path(key: str) -> str:
    # As glibc's shm_open: leading slashes are dropped, no other slash is allowed.
    name = key.lstrip("/")
    if not name or "/" in name or "\x00" in name or name in (".", "..") or len(name) > _MAX_KEY:
        raise InvalidInputError(f"shared memory key '{key}' is not a valid POSIX shared memory name ('/name', no other '/')")
    return os.path.join(SHM_DIR, name)


def _open_region(name: str, key: str, offset: int, byte_size: int) -> Region:
    path = _object_path(key)
    what = f"failed to register shared memory region '{name}'"
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInputError(f"{what}: unable to open shared memory object '{key}': {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInputError(f"{what}: '{key}' is not a shared memory object")
        if offset + byte_size > st.st_size:
            raise InvalidInputError(
                f"{what}: offset {offset} + byte_size {byte_size} exceeds the {st.st_size} bytes of '{key}'"
            )
        start = offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(fd, start + byte_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                                offset=offset - start)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{what}: cannot map '{key}': {exc}") from None
    except BaseException:
        os.close(fd)
        raise
    return Region(name, key, offset, byte_size, fd, mapping, start)


class SharedMemoryRegistry:
    """The system shared-memory regions of this process, by name; shared by the HTTP and gRPC APIs."""

    def __init__(self, allowed: bool = False, max_regions: int = MAX_REGIONS) -> None:
        self.allowed = allowed
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}
        # Unregistered while requests still viewed them: closed by a later call once free.
        self._retired: list[Region] = []

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        self._check_allowed()
        if not name:
            raise InvalidInputError("a shared memory region needs a non-empty name")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if type(value) is not int or value < 0:
                raise InvalidInputError(f"failed to register shared memory region '{name}': '{field}' must be a non-negative integer, got {value!r}")
        if byte_size == 0:
            raise InvalidInputError(f"failed to register shared memory region '{name}': 'byte_size' must be at least 1")
        self._sweep()
        if name in self._regions:
            raise AlreadyExistsError(f"shared memory region '{name}' already in manager")
        if len(self._regions) >= self.max_regions:
            raise TooManyRequestsError(
                f"failed to register shared memory region '{name}': {self.max_regions} regions are registered, the most one process holds"
            )
        self._regions[name] = _open_region(name, key, offset, byte_size)

    def unregister(self, name: str = "") -> None:
        """One region, or all when ``name`` is empty; an unknown name is not an error (as Triton)."""
        self._check_allowed()
        names = [name] if name else list(self._regions)
        for n in names:
            region = self._regions.pop(n, None)
            if region is not None and not region.close():
                self._retired.append(region)
        self._sweep()

    def status(self, name: str = "") -> list[dict[str, int | str]]:
        if not name:
            return [r.status() for r in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise SharedMemoryNotFoundError(f"Unable to find system shared memory region: '{name}'")
        return [region.status()]

    def close(self) -> None:
        """At shutdown; a mapping still viewed is left to the process exit."""
        for region in [*self._regions.values(), *self._retired]:
            region.close()
        self._regions.clear()
        self._retired.clear()

    def _sweep(self) -> None:
        if self._retired:
            self._retired = [r for r in self._retired if not r.close()]

    def _check_allowed(self) -> None:
        if not self.allowed:
            raise PermissionDeniedError(
                "system shared memory is off on this server: start it with allow_client_shm: true "
                "(GATEWAY_ALLOW_CLIENT_SHM=1) to let same-host clients register regions"
            )

    def _region(self, ref: ShmRef, what: str) -> Region:
        self._check_allowed()
        region = self._regions.get(ref.region)
        if region is None:
            raise SharedMemoryNotFoundError(f"{what}: Unable to find shared memory region: '{ref.region}'")
        return region

    # -- tensors -----------------------------------------------------------------------------------

    def read(self, ref: ShmRef, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
        """The input tensor at ``ref``: a view of the mapping (BYTES elements are copied out)."""
        window = self._region(ref, what).window(ref, what)
        dtype = datatypes.to_numpy(datatype)
        if dtype is not None:
            expected = tensors.element_count(shape, what) * dtype.itemsize
            if ref.byte_size != expected:
                raise InvalidInputError(
                    f"{what}: shared_memory_byte_size {ref.byte_size} does not match {datatype} shape "
                    f"{list(shape)}, which needs {expected} bytes"
                )
        array = tensors.from_raw(window, datatype, shape, what)
        if array.flags.writeable:
            array.flags.writeable = False  # the model must not write into the client's memory
        return array

    def output_window(self, ref: ShmRef, what: str) -> OutputWindow:
        """The window an output will be written to, bounds-checked now, before the model runs."""
        region = self._region(ref, what)
        return OutputWindow(region, ref, region.window(ref, what))


def _raw_view(array: np.ndarray) -> bytes | memoryview:
    """The tensor's v2 raw bytes, viewed rather than copied when it is already laid out so."""
    if array.dtype.kind in ("O", "S", "U"):
        return tensors.bytes_to_raw(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    flat = np.ascontiguousarray(array).reshape(-1)
    return memoryview(flat.data).cast("B")
