"""Finding and replacing modules inside a model, by identity, type or predicate.

The traversal is depth-first over each module's children in registration order
(``_modules``); the model itself is never part of the result.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Type, Union

from torch import nn


def replace_layer_recursive(model: nn.Module, old_layer: nn.Module, new_layer: nn.Module) -> bool:
    """Replace the first child that *is* ``old_layer`` (by identity) with ``new_layer``.

    Returns:
        True if a child was replaced, False if ``old_layer`` is not inside ``model``.
    """
    for name, layer in model._modules.items():  # noqa: SLF001 - every registration, as grad-cam walks them
        if layer is old_layer:
            model._modules[name] = new_layer  # noqa: SLF001 - the same slot, as grad-cam replaces it
            return True
        if layer is not None and replace_layer_recursive(layer, old_layer, new_layer):
            return True
    return False


def replace_all_layer_type_recursive(
    model: nn.Module, old_layer_type: Union[Type[nn.Module], tuple], new_layer: nn.Module
) -> None:
    """Replace every child that is an instance of ``old_layer_type`` (``isinstance``)
    with the same ``new_layer`` object; the search continues into every child."""
    for name, layer in model._modules.items():  # noqa: SLF001 - every registration, as grad-cam walks them
        if isinstance(layer, old_layer_type):
            model._modules[name] = new_layer  # noqa: SLF001 - the same slot, as grad-cam replaces it
        if layer is not None:
            replace_all_layer_type_recursive(layer, old_layer_type, new_layer)


def find_layer_types_recursive(model: nn.Module, layer_types: Iterable[type]) -> List[nn.Module]:
    """Every module below ``model`` whose type is exactly one of ``layer_types``
    (no subclasses), parents before their descendants."""
    layer_types = tuple(layer_types)
    return find_layer_predicate_recursive(model, lambda layer: type(layer) in layer_types)


def find_layer_predicate_recursive(model: nn.Module, predicate: Callable[[nn.Module], bool]) -> List[nn.Module]:
    """Every module below ``model`` (not ``model`` itself) for which ``predicate`` is
    true, in pre-order: a parent before its descendants. A module registered under
    two parents is found twice."""
    found = []
    for layer in model._modules.values():  # noqa: SLF001 - duplicates included (named_children drops them)
        if layer is None:
            continue
        if predicate(layer):
            found.append(layer)
        found.extend(find_layer_predicate_recursive(layer, predicate))
    return found
