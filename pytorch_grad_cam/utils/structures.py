"""Nested tensor structures: a layer's or a model's output may be a tensor, or a dict,
list, tuple or namedtuple of them (a Faster R-CNN FPN's dict of feature maps, a
Hugging Face ``ModelOutput``). Every part of the library walks them with these helpers,
so a namedtuple or a dict subclass is rebuilt the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["tensors_in", "first_tensor", "map_tensors", "detached", "tensor_parts", "rebuild"]


def _is_namedtuple(value: object) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _rebuild_sequence(template: object, values: List[object]) -> object:
    """A list/tuple/namedtuple of the same type as ``template`` holding ``values``."""
    if _is_namedtuple(template):
        return type(template)(*values)
    return type(template)(values)


def _rebuild_mapping(template: Mapping, items: Dict[object, object]) -> object:
    """A mapping of ``template``'s type holding ``items``; a plain dict where that type
    cannot be built from its items (a dict subclass with another constructor)."""
    try:
        return type(template)(items)
    except Exception:  # noqa: BLE001 - any constructor that does not take a dict
        return dict(items)


def tensors_in(value: object) -> List[torch.Tensor]:
    """Every tensor inside ``value`` (itself, or inside dicts/lists/tuples at any depth),
    in order. Returns [] when there is none."""
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, Mapping):
        parts = list(value.values())
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        return []
    return [tensor for part in parts for tensor in tensors_in(part)]


def first_tensor(value: object) -> torch.Tensor:
    """The first tensor inside ``value``.

    Raises:
        TypeError: if ``value`` holds no tensor.
    """
    found = tensors_in(value)
    if not found:
        raise TypeError(f"expected a tensor or a structure of tensors, got {type(value).__name__}")
    return found[0]


def map_tensors(value: object, function: Callable[[torch.Tensor], torch.Tensor]) -> object:
    """``value`` with ``function`` applied to every tensor inside it (any depth); the
    structure's types (dict subclasses, namedtuples) are kept, other values passed as they are."""
    if torch.is_tensor(value):
        return function(value)
    if isinstance(value, Mapping):
        return _rebuild_mapping(value, {key: map_tensors(part, function) for key, part in value.items()})
    if isinstance(value, (list, tuple)):
        return _rebuild_sequence(value, [map_tensors(part, function) for part in value])
    return value


def detached(value: object) -> object:
    """``value`` with every tensor inside detached from the autograd graph."""
    return map_tensors(value, torch.Tensor.detach)


def tensor_parts(value: object) -> Optional[Dict[object, torch.Tensor]]:
    """The tensors of a flat dict (by key) or list/tuple (by position).

    Returns:
        key -> tensor, or None when ``value`` is not a non-empty flat structure whose
        every entry is a tensor.
    """
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (tuple, list)):
        items = list(enumerate(value))
    else:
        return None
    if not items or not all(torch.is_tensor(part) for _, part in items):
        return None
    return dict(items)


def rebuild(template: object, parts: Dict[object, torch.Tensor]) -> object:
    """A structure like ``template`` (a flat dict/list/tuple/namedtuple: same type, keys
    and order) holding ``parts`` (key or position -> tensor)."""
    if isinstance(template, Mapping):
        return _rebuild_mapping(template, {key: parts[key] for key in template})
    return _rebuild_sequence(template, [parts[index] for index in range(len(template))])
