"""A decoder-only model with a KV cache, as a batch of rows that persists between steps.

Wraps any executor (named arrays in, named arrays out) whose graph has the layout that
exporters produce for text generation with past key values: ``input_ids``,
``attention_mask``, ``position_ids`` (if present), ``past_key_values.{i}.key|value``
``[batch, heads, past, head_dim]`` in; ``logits`` and ``present.{i}.key|value`` out.
It knows rows by opaque slot ids, nothing of requests; every method is synchronous
and called from the generation engine's one worker thread.

KV-cache layout: one left-padded batch, masked by ``attention_mask``.
  Every row's real entries end at the last column, so a decode step appends one column
  for everyone and rows stay aligned; a row that joins is left-padded to the batch's
  length (or the batch to its), one that leaves is dropped and all-padding leading
  columns are trimmed. Why not blocks/pages: the exported graph takes each layer's past
  as one contiguous tensor and concatenates the new key onto it inside the graph, so it
  already copies the whole cache every step; a paged store would add a gather into that
  same contiguous tensor per step. The price of padding is wasted columns (rows shorter
  than the longest) and a copy of the batch when rows join or leave, which happens at
  most once per step; the engine measures it (``GenerationStats.repad_ns`` against
  ``step_ns``; benchmarks/generation_bench.py prints the share).
  Prefill runs rows of equal prompt length together with no padding, so a sequence's
  first token is computed exactly as it would be alone.

Where the past lives is the store's business (``KvStore``): ``HostKv`` keeps numpy arrays
and feeds them through ``executor.run`` (any executor); ``kv_device.DeviceKv`` keeps
OrtValues on the session's device and moves rows there. The decoder keeps the rows'
bookkeeping (slots, mask, positions: small, host-side) and the same layout for both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gateway.core import datatypes
from gateway.executors.base import Executor

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


class DecoderLayoutError(ValueError):
    """The model's inputs/outputs are not a decoder with a KV cache in the expected layout."""


@dataclass(frozen=True, slots=True)
class DecoderLayout:
    layers: int
    heads: int
    head_dim: int
    kv_dtype: np.dtype
    has_position_ids: bool
    past_names: tuple[str, ...]  # key, value per layer, in order
    present_names: tuple[str, ...]
    ids_dtype: np.dtype
    mask_dtype: np.dtype

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.layers * self.heads * self.head_dim * self.kv_dtype.itemsize

    def empty_past(self, rows: int) -> np.ndarray:
        """A zero-length past for ``rows`` rows (a prefill's): no bytes, one array serves every tensor."""
        return np.zeros((rows, self.heads, 0, self.head_dim), self.kv_dtype)


def read_layout(executor: Executor) -> DecoderLayout:
    inputs = {s.name: s for s in executor.inputs}
    outputs = {s.name: s for s in executor.outputs}
    for name in ("input_ids", "attention_mask"):
        if name not in inputs:
            raise DecoderLayoutError(f"a generation model needs an input '{name}' (it has {sorted(inputs)})")
    if "logits" not in outputs:
        raise DecoderLayoutError(f"a generation model needs an output 'logits' (it has {sorted(outputs)})")
    layers = sorted({int(m.group(1)) for n in inputs if (m := _PAST.match(n))})
    if not layers or layers != list(range(len(layers))):
        raise DecoderLayoutError(
            "a generation model needs KV-cache inputs past_key_values.{i}.key/.value for layers 0..n-1 "
            "(export with --task text-generation-with-past)"
        )
    past_names, present_names = [], []
    heads: int | None = None
    head_dim: int | None = None
    kv_type: str | None = None
    for layer in layers:
        for kind in ("key", "value"):
            past = inputs.get(f"past_key_values.{layer}.{kind}")
            present = f"present.{layer}.{kind}"
            if past is None or present not in outputs:
                raise DecoderLayoutError(f"layer {layer} needs input past_key_values.{layer}.{kind} and output {present}")
            if len(past.shape) != 4 or past.shape[1] < 1 or past.shape[3] < 1:
                raise DecoderLayoutError(
                    f"past_key_values.{layer}.{kind} must be [batch, heads, past, head_dim] with fixed heads and "
                    f"head_dim, got {list(past.shape)}"
                )
            heads, head_dim, kv_type = past.shape[1], past.shape[3], past.datatype
            past_names.append(past.name)
            present_names.append(present)
    # Set by the loop, which ran: layers is not empty.
    assert heads is not None and head_dim is not None and kv_type is not None
    return DecoderLayout(
        layers=len(layers),
        heads=heads,
        head_dim=head_dim,
        kv_dtype=np.dtype(datatypes.to_numpy(kv_type)),
        has_position_ids="position_ids" in inputs,
        past_names=tuple(past_names),
        present_names=tuple(present_names),
        ids_dtype=np.dtype(datatypes.to_numpy(inputs["input_ids"].datatype)),
        mask_dtype=np.dtype(datatypes.to_numpy(inputs["attention_mask"].datatype)),
    )


class HostKv:
    """The cache as numpy arrays on the host: every run feeds the past through ``executor.run``
    and gets the present back, on any executor (on a GPU provider the whole cache crosses the
    bus twice per step; ``kv_device.DeviceKv`` keeps it there instead)."""

    def __init__(self, executor: Executor, layout: DecoderLayout) -> None:
        self.executor = executor
        self.layout = layout
        self._outputs = ["logits", *layout.present_names]

    def run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list | None) -> tuple[np.ndarray, list]:
        lay = self.layout
        if past is None:
            past = [lay.empty_past(ids.shape[0])] * len(lay.past_names)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if lay.has_position_ids:
            feeds["position_ids"] = positions
        feeds.update(zip(lay.past_names, past))
        out = self.executor.run(feeds, self._outputs)
        return out[0], out[1:]

    # One copy of each tensor per move, written straight into the result (np.pad + concatenate, or
    # fancy indexing then ascontiguousarray, copied twice: a join of 31 rows x 100 columns took 2x as long).
    def join(self, old: list, old_by: int, new: list, new_by: int) -> list:
        out = []
        for o, n in zip(old, new):
            rows, heads, length, head_dim = o.shape
            joined = np.empty((rows + n.shape[0], heads, length + old_by, head_dim), o.dtype)
            joined[:rows, :, :old_by] = 0
            joined[:rows, :, old_by:] = o
            joined[rows:, :, :new_by] = 0
            joined[rows:, :, new_by:] = n
            out.append(joined)
        return out

    def keep(self, past: list, rows: list[int], start: int) -> list:
        index = np.asarray(rows, np.intp)
        return [p[index, :, start:] for p in past]  # advanced index first: a new C-contiguous array


class KvStore(Protocol):
    """Where the past lives and how it moves; the decoder keeps the rows' bookkeeping (slots,
    mask, positions) on the host and holds the store's per-tensor values opaquely."""

    layout: DecoderLayout

    def run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list | None) -> tuple[np.ndarray, list]:
        """Logits (host) and the present (the store's values); ``past`` None = empty."""
        ...

    def join(self, old: list, old_by: int, new: list, new_by: int) -> list:
        """Rows of ``old`` then ``new``, each left-padded on the length axis by its ``*_by``."""
        ...

    def keep(self, past: list, rows: list[int], start: int) -> list:
        """Rows ``rows`` of ``past``, columns from ``start`` on."""
        ...


class KvCacheDecoder:
    def __init__(self, executor: Executor, store: KvStore | None = None) -> None:
        self.executor = executor
        self.store: KvStore = store if store is not None else HostKv(executor, read_layout(executor))
        self.layout = self.store.layout
        self._slots: list[int] = []  # row order of the batch
        self._past: list = []  # per past name, the store's value: [rows, heads, length, head_dim]
        self._mask = np.zeros((0, 0), self.layout.mask_dtype)  # [rows, length]; 0 = padding
        self._next_pos = np.zeros(0, np.int64)  # per row: position id of its next token

    @property
    def rows(self) -> int:
        return len(self._slots)

    @property
    def length(self) -> int:
        """Padded cache length of the batch (columns)."""
        return self._mask.shape[1]

    # -- rows leave ------------------------------------------------------------------------

    def release(self, slots: list[int]) -> None:
        """Drop rows, then trim the leading columns no remaining row uses."""
        gone = set(slots)
        keep = [i for i, s in enumerate(self._slots) if s not in gone]
        if len(keep) == len(self._slots):
            return
        self._slots = [self._slots[i] for i in keep]
        if not keep:
            self._past, self._mask, self._next_pos = [], np.zeros((0, 0), self.layout.mask_dtype), np.zeros(0, np.int64)
            return
        mask = self._mask[keep]
        used = mask.any(axis=0)
        start = int(np.argmax(used)) if used.any() else mask.shape[1]
        self._mask = np.ascontiguousarray(mask[:, start:])
        self._past = self.store.keep(self._past, keep, start)
        self._next_pos = self._next_pos[keep]

    # -- decode: every row, one token each, one call ----------------------------------------

    def decode(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        """Next-token logits of every row, fed its last token; ``tokens`` covers every slot."""
        rows = len(self._slots)
        ids = np.fromiter((tokens[s] for s in self._slots), dtype=self.layout.ids_dtype, count=rows).reshape(rows, 1)
        mask = np.concatenate([self._mask, np.ones((rows, 1), self._mask.dtype)], axis=1)
        positions = self._next_pos.reshape(rows, 1)
        logits, present = self.store.run(ids, mask, positions, self._past)
        self._past, self._mask = present, mask
        self._next_pos = self._next_pos + 1
        return {s: logits[i, -1] for i, s in enumerate(self._slots)}

    # -- prefill: new rows of one prompt length, then they join ----------------------------

    def prefill(self, slots: list[int], prompts: np.ndarray) -> dict[int, np.ndarray]:
        """Run prompts of equal length ``[rows, length]`` with an empty past; their caches join the batch."""
        rows, length = prompts.shape
        ids = prompts.astype(self.layout.ids_dtype, copy=False)
        mask = np.ones((rows, length), self.layout.mask_dtype)
        positions = np.broadcast_to(np.arange(length, dtype=np.int64), (rows, length))
        logits, present = self.store.run(ids, mask, np.ascontiguousarray(positions), None)
        self._join(slots, present, mask, np.full(rows, length, np.int64))
        return {s: logits[i, -1] for i, s in enumerate(slots)}

    def _join(self, slots: list[int], past: list, mask: np.ndarray, next_pos: np.ndarray) -> None:
        if not self._slots:
            self._slots, self._past, self._mask, self._next_pos = list(slots), list(past), mask, next_pos
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        self._past = self.store.join(self._past, width - old_len, past, width - new_len)
        self._mask = np.concatenate([_left_pad_2d(self._mask, width - old_len), _left_pad_2d(mask, width - new_len)], axis=0)
        self._next_pos = np.concatenate([self._next_pos, next_pos])
        self._slots += slots

    def reset(self) -> None:
        self.release(list(self._slots))


def _left_pad_2d(mask: np.ndarray, by: int) -> np.ndarray:
    return mask if by == 0 else np.pad(mask, [(0, 0), (by, 0)])
