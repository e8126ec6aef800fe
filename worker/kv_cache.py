"""A key/value cache for the batched decode loop that grows without copying every step,
and takes rows in and lets them go without copying the rows that stay (continuous
batching). Built on transformers' public cache interface: a :class:`~transformers.Cache`
made of our own :class:`~transformers.CacheLayerMixin` layers.

transformers' :class:`~transformers.DynamicCache` concatenates each new token onto the
whole cache, so a decode step copies every row's keys and values: at 32 rows and a
hundred tokens that copying costs more than the model. :class:`GrowingLayer` keeps
buffers with spare room (doubled when full) and writes each token in place; the model
sees views of the filled part. The buffers also have room for rows (the decode loop's
capacity): a row that joins is written into the next free one, and a row that leaves
is filled by the last row (only that row moves). Selecting rows through a fancy index,
as transformers does, copies the whole buffer: at 32 rows of 200 positions that cost
more than a decode step, and a busy decode loop has a row leave every other step.

Every layer keeps every position, sliding-window layers included: rows are aligned on
the cache's columns (left-padded), so a row's tokens sit in consecutive columns and the
model's sliding-window mask, which measures distances in columns, hides what is out of
the window as it does in transformers' own sliding layers.
"""

import inspect
from functools import lru_cache
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

#: Positions a fresh buffer has room for.
INITIAL_ROOM = 64


class GrowingLayer(CacheLayerMixin):
    """One attention layer's keys and values, in buffers with room to grow."""

    is_sliding = False
    is_compileable = False

    def __init__(self, rows_room: int = 0) -> None:
        super().__init__()
        self.keys: torch.Tensor | None = None  # views of the buffers' filled part
        self.values: torch.Tensor | None = None
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0
        self._rows = 0
        self._rows_room = rows_room

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Buffers for the first states, with room for ``rows_room`` rows."""
        self._rows = key_states.shape[0]
        rows = max(self._rows, self._rows_room)
        length = key_states.shape[-2]
        self._key_buffer = _room_for(key_states, rows, length)
        self._value_buffer = _room_for(value_states, rows, length)
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._key_buffer is None or self._value_buffer is None:
            self.lazy_initialization(key_states, value_states)
        assert self._key_buffer is not None and self._value_buffer is not None
        length = self._length + key_states.shape[-2]
        if length > self._key_buffer.shape[-2]:
            self._key_buffer = _moved(self._key_buffer, self._rows, self._length, length)
            self._value_buffer = _moved(self._value_buffer, self._rows, self._length, length)
        rows = self._rows
        self._key_buffer[:rows, :, self._length : length] = key_states
        self._value_buffer[:rows, :, self._length : length] = value_states
        self._length = length
        return self._refresh()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The mask spans every position held and the queries (no offset: nothing slides)."""
        return self._length + query_length, 0

    def get_seq_length(self) -> int:
        return self._length

    def get_max_length(self) -> int:
        return -1  # no maximum: the buffers grow

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        self.keys = self.values = None
        self._length = self._rows = 0
        self.is_initialized = False

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

    def reserve(self, count: int) -> None:
        """Room for ``count`` more positions and one to spare, so that the next update
        writes into the buffers as they are (a compiled step must not see them grow: the
        growth is a branch it would compile again), and leaves the filled part shorter
        than the buffer (a view that spans its whole buffer has another layout, which a
        compiled step would compile again for too)."""
        if self._key_buffer is None or self._value_buffer is None:
            return
        needed = self._length + count + 1
        if needed > self._key_buffer.shape[-2]:
            self._key_buffer = _moved(self._key_buffer, self._rows, self._length, needed)
            self._value_buffer = _moved(self._value_buffer, self._rows, self._length, needed)
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


class GrowingCache(Cache):
    """A :class:`~transformers.Cache` of ``layers`` :class:`GrowingLayer` layers, with
    room for ``rows_room`` rows."""

    def __init__(self, layers: int, rows_room: int = 0) -> None:
        super().__init__(layers=[GrowingLayer(rows_room) for _ in range(layers)])

    def take_rows(self, other: "GrowingCache") -> None:
        """Append ``other``'s rows (continuous batching: a prefill joins the loop)."""
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            assert isinstance(mine, GrowingLayer) and isinstance(theirs, GrowingLayer)
            mine.take_rows(theirs)

    def reserve(self, count: int) -> None:
        """Room in every layer for ``count`` more positions (see :meth:`GrowingLayer.reserve`)."""
        for layer in self.layers:
            assert isinstance(layer, GrowingLayer)
            layer.reserve(count)

    def trim_left(self, count: int) -> None:
        """Forget the oldest ``count`` positions of every layer."""
        for layer in self.layers:
            assert isinstance(layer, GrowingLayer)
            layer.trim_left(count)


def _room_for(states: torch.Tensor, rows: int, length: int) -> torch.Tensor:
    shape = list(states.shape)
    shape[0] = rows
    shape[-2] = max(INITIAL_ROOM, 2 * length)
    return _new_buffer(states, shape)


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
    bigger = _new_buffer(buffer, shape)
    bigger[:rows, :, :shift] = 0
    bigger[:rows, :, shift : shift + filled] = buffer[:rows, :, :filled]
    return bigger


def _new_buffer(like: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """An empty buffer of ``shape``: a view of an allocation one position longer (the
    first one unused). Every buffer is then a view, as a trimmed one is
    (:meth:`GrowingLayer.trim_left`), and a compiled step sees a single layout: a graph
    compiled for contiguous buffers would not serve views, nor the other way round."""
    longer = [*shape[:-2], shape[-2] + 1, shape[-1]]
    return like.new_empty(longer)[..., 1:, :]


#: The attention kinds a growing cache serves: every layer keeps keys and values for every
#: position (recurrent states, chunked or compressed attention keep their own caches).
GROWING_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})


def attention_layers(config: Any) -> int | None:
    """How many layers a growing cache needs for a model of ``config``, or None when its
    layers are not all plain attention (the model then builds its own cache and runs
    static batches)."""
    text_config = config.get_text_config(decoder=True)
    layers = getattr(text_config, "num_hidden_layers", None)
    layer_types = getattr(text_config, "layer_types", None) or []
    if not isinstance(layers, int) or any(kind not in GROWING_LAYER_TYPES for kind in layer_types):
        return None
    if getattr(text_config, "num_kv_shared_layers", 0):
        return None  # layers reading another layer's cache
    return layers


@lru_cache
def takes(model_class: Any, argument: str) -> bool:
    """Whether the model's forward takes ``argument`` (read once per class: a run starts
    for every job when batching is off)."""
    return argument in inspect.signature(model_class.forward).parameters


def cache_argument(model_class: Any) -> str:
    """The name under which the model's forward takes its key/value cache: ``cache`` since
    transformers 5.24 (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    return "cache" if takes(model_class, "cache") else "past_key_values"
