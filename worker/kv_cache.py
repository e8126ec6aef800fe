"""A key/value cache for the batched decode loop that grows without copying every step,
and can take rows in (continuous batching).

transformers' :class:`~transformers.DynamicCache` concatenates each new token onto the
whole cache, so a decode step copies every row's keys and values: at 32 rows and a
hundred tokens that copying costs more than the model. :class:`GrowingLayer` keeps
buffers with spare room (doubled when full) and writes each token in place; the model
sees views of the filled part.
"""

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

#: Positions a fresh buffer has room for.
INITIAL_ROOM = 64


class GrowingLayer(DynamicLayer):
    def __init__(self) -> None:
        super().__init__()
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self._length + key_states.shape[-2]
        if self._key_buffer is None or self._value_buffer is None:
            self._key_buffer = _room_for(key_states, length)
            self._value_buffer = _room_for(value_states, length)
        elif length > self._key_buffer.shape[-2]:
            self._key_buffer = _grown(self._key_buffer, self._length, length)
            self._value_buffer = _grown(self._value_buffer, self._length, length)
        self._key_buffer[:, :, self._length : length] = key_states
        self._value_buffer[:, :, self._length : length] = value_states
        self._length = length
        return self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._key_buffer is None or self._value_buffer is None:
            return
        self._key_buffer = self._key_buffer[indices]
        self._value_buffer = self._value_buffer[indices]
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
        keys = self._key_buffer[:, :, : self._length]
        values = self._value_buffer[:, :, : self._length]
        self.keys, self.values = keys, values
        return keys, values


class GrowingCache(DynamicCache):
    """A :class:`DynamicCache` made of :class:`GrowingLayer` layers."""

    def __init__(self, layers: list[GrowingLayer] | None = None) -> None:
        if layers:
            mixed: list[Any] = list(layers)
            Cache.__init__(self, layers=mixed)
        else:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


def _room_for(states: torch.Tensor, length: int) -> torch.Tensor:
    shape = list(states.shape)
    shape[-2] = max(INITIAL_ROOM, 2 * length)
    return states.new_empty(shape)


def _grown(buffer: torch.Tensor, filled: int, needed: int) -> torch.Tensor:
    shape = list(buffer.shape)
    shape[-2] = max(2 * buffer.shape[-2], needed)
    bigger = buffer.new_empty(shape)
    bigger[:, :, :filled] = buffer[:, :, :filled]
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


def merged(first: GrowingCache, second: GrowingCache, length: int) -> GrowingCache:
    """Both caches' rows in one, each left-padded to ``length`` positions (the padding is
    hidden by the attention mask)."""
    layers = []
    for mine, theirs in zip(first.layers, second.layers, strict=True):
        assert isinstance(mine, GrowingLayer) and isinstance(theirs, GrowingLayer)
        layer = GrowingLayer()
        keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
        values = torch.cat([_left_pad(mine.values, length), _left_pad(theirs.values, length)])
        layer.update(keys, values)
        layers.append(layer)
    return GrowingCache(layers)


def _left_pad(states: torch.Tensor | None, length: int) -> torch.Tensor:
    assert states is not None
    missing = length - states.shape[-2]
    if missing <= 0:
        return states
    shape = list(states.shape)
    shape[-2] = missing
    return torch.cat([states.new_zeros(shape), states], dim=-2)
