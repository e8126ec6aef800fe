"""A key/value cache for the batched decode loop that grows without copying every step,
and takes rows in and lets them go without copying the rows that stay (continuous
batching).

transformers' :class:`~transformers.DynamicCache` concatenates each new token onto the
whole cache, so a decode step copies every row's keys and values: at 32 rows and a
hundred tokens that copying costs more than the model. :class:`GrowingLayer` keeps
buffers with spare room (doubled when full) and writes each token in place; the model
sees views of the filled part. The buffers also have room for rows (the decode loop's
capacity): a row that joins is written into the next free one, and a row that leaves
is filled by the last row (only that row moves). Selecting rows through a fancy index,
as transformers does, copies the whole buffer: at 32 rows of 200 positions that cost
more than a decode step, and a busy decode loop has a row leave every other step.
"""

from functools import partial
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

#: Positions a fresh buffer has room for.
INITIAL_ROOM = 64


class GrowingLayer(DynamicLayer):
    def __init__(self, rows_room: int = 0) -> None:
        super().__init__()
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0
        self._rows = 0
        self._rows_room = rows_room

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self._length + key_states.shape[-2]
        if self._key_buffer is None or self._value_buffer is None:
            self._rows = key_states.shape[0]
            rows = max(self._rows, self._rows_room)
            self._key_buffer = _room_for(key_states, rows, length)
            self._value_buffer = _room_for(value_states, rows, length)
        elif length > self._key_buffer.shape[-2]:
            self._key_buffer = _moved(self._key_buffer, self._rows, self._length, length)
            self._value_buffer = _moved(self._value_buffer, self._rows, self._length, length)
        rows = self._rows
        self._key_buffer[:rows, :, self._length : length] = key_states
        self._value_buffer[:rows, :, self._length : length] = value_states
        self._length = length
        return self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Row ``i`` becomes row ``indices[i]``; only the rows that change place are
        copied (callers that drop rows move the last rows into the gaps)."""
        if self._key_buffer is None or self._value_buffer is None:
            return
        order = indices.tolist()
        moved = [i for i, source in enumerate(order) if source != i]
        if moved:
            sources = [order[i] for i in moved]
            for buffer in (self._key_buffer, self._value_buffer):
                buffer[moved, :, : self._length] = buffer[sources, :, : self._length]
        self._rows = len(order)
        self._refresh()

    def take_rows(self, other: "GrowingLayer") -> None:
        """Append ``other``'s rows after this layer's, both left-padded with zeros (which
        the attention mask hides) to the longer of the two."""
        assert self._key_buffer is not None and self._value_buffer is not None
        assert other.keys is not None and other.values is not None
        joining, their_length = other.keys.shape[0], other.keys.shape[-2]
        shift = max(0, their_length - self._length)
        rows = self._rows + joining
        if shift or rows > self._key_buffer.shape[0]:
            length = self._length + shift
            self._key_buffer = _moved(
                self._key_buffer, self._rows, self._length, length, shift, rows
            )
            self._value_buffer = _moved(
                self._value_buffer, self._rows, self._length, length, shift, rows
            )
            self._length = length
        start = self._length - their_length
        for buffer, states in ((self._key_buffer, other.keys), (self._value_buffer, other.values)):
            buffer[self._rows : rows, :, :start] = 0
            buffer[self._rows : rows, :, start : self._length] = states
        self._rows = rows
        self._refresh()

    def trim_left(self, count: int) -> None:
        """Forget the oldest ``count`` positions (padding no row attends to any more)."""
        if self._key_buffer is None or self._value_buffer is None or count <= 0:
            return
        self._key_buffer = self._key_buffer[:, :, count:]
        self._value_buffer = self._value_buffer[:, :, count:]
        self._length -= count
        self._refresh()

    def _refresh(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._key_buffer is not None and self._value_buffer is not None
        keys = self._key_buffer[: self._rows, :, : self._length]
        values = self._value_buffer[: self._rows, :, : self._length]
        self.keys, self.values = keys, values
        return keys, values


class GrowingCache(DynamicCache):
    """A :class:`DynamicCache` made of :class:`GrowingLayer` layers, with room for
    ``rows_room`` rows."""

    def __init__(self, rows_room: int = 0) -> None:
        layer: Any = partial(GrowingLayer, rows_room)  # a layer made on each layer's first update
        Cache.__init__(self, layer_class_to_replicate=layer)

    def take_rows(self, other: "GrowingCache") -> None:
        """Append ``other``'s rows (continuous batching: a prefill joins the loop)."""
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            assert isinstance(mine, GrowingLayer) and isinstance(theirs, GrowingLayer)
            mine.take_rows(theirs)


def _room_for(states: torch.Tensor, rows: int, length: int) -> torch.Tensor:
    shape = list(states.shape)
    shape[0] = rows
    shape[-2] = max(INITIAL_ROOM, 2 * length)
    return states.new_empty(shape)


def _moved(
    buffer: torch.Tensor,
    rows: int,
    filled: int,
    needed: int,
    shift: int = 0,
    rows_needed: int = 0,
) -> torch.Tensor:
    """A bigger buffer (room for ``needed`` positions and ``rows_needed`` rows) holding the
    ``rows`` x ``filled`` positions, moved ``shift`` positions right (zeros before)."""
    shape = list(buffer.shape)
    shape[0] = max(shape[0], rows_needed)
    if needed > shape[-2]:
        shape[-2] = max(2 * shape[-2], needed)
    bigger = buffer.new_empty(shape)
    bigger[:rows, :, :shift] = 0
    bigger[:rows, :, shift : shift + filled] = buffer[:rows, :, :filled]
    return bigger


def trim_left(cache: GrowingCache, count: int) -> None:
    for layer in cache.layers:
        assert isinstance(layer, GrowingLayer)
        layer.trim_left(count)


def fits_growing_cache(config: Any) -> bool:
    """Full attention in every layer: sliding windows and hybrid models keep the cache
    their own code builds (and so run static batches)."""
    layer_types = getattr(config, "layer_types", None) or []
    return not getattr(config, "sliding_window", None) and all(
        kind == "full_attention" for kind in layer_types
    )


def can_merge(cache: object) -> bool:
    """Only plain key/value layers can take rows in (not sliding windows, not states)."""
    return isinstance(cache, GrowingCache) and all(
        isinstance(layer, GrowingLayer) for layer in cache.layers
    )
