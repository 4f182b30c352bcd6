"""Target layers: turning the user's layer arguments into modules of the model, and
naming them back in messages.

Layers may be given as modules or as dotted names (``"layer4.2"``). A model wrapped in
``nn.DataParallel``/``DistributedDataParallel`` is explained through the model inside:
a CAM explains one forward pass of the network itself, while DataParallel's replicas run
in worker threads (where our hooks do not record) and DDP adds gradient synchronisation
that a CAM's partial backward pass never completes.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

from torch import nn

__all__ = ["LayerSpec", "unwrap_parallel", "unwrap_compiled", "resolve_target_layers", "layer_name"]

LayerSpec = Union[nn.Module, str]

#: Wrappers that run replicas of ``.module`` (in worker threads, or one per process).
_PARALLEL_WRAPPERS = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The module inside a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``), or
    ``model`` itself. A compiled graph runs without the module hooks a CAM needs, and the
    target layers a user names belong to the original module, so the CAM runs that one."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule" else model


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The model inside ``nn.DataParallel``/``DistributedDataParallel`` (and
    ``torch.compile``) wrappers; ``model`` itself when it is not wrapped."""
    while True:
        inner = unwrap_compiled(model)
        if isinstance(inner, _PARALLEL_WRAPPERS):
            inner = inner.module
        if inner is model:
            return model
        model = inner


def resolve_target_layers(
    model: nn.Module,
    target_layers: Union[LayerSpec, Sequence[LayerSpec], None],
    target_layer: Optional[LayerSpec] = None,
) -> Optional[List[nn.Module]]:
    """Turn the user's layer arguments into a list of modules inside ``model``.

    A name may carry a wrapper's prefix (``module.``, ``_orig_mod.``) or not.

    Returns:
        The target modules, in the order given; None when no layer is given (the first
        call then finds one, see :mod:`pytorch_grad_cam.layer_search`).

    Raises:
        ValueError: if both ``target_layers`` and ``target_layer`` are given, the list is
            empty, or a layer (module or name) is not inside ``model``.
        TypeError: if a layer is neither a module nor a name.
    """
    if target_layers is not None and target_layer is not None:
        raise ValueError("pass target_layers=[...] or target_layer=..., not both")
    layers = target_layers if target_layers is not None else target_layer
    if layers is None:
        return None
    if isinstance(layers, (nn.Module, str)):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("target_layers is empty; pass at least one module of the model")
    named = dict(model.named_modules())
    inner = unwrap_parallel(model)
    if inner is not model:
        named.update((name, module) for name, module in inner.named_modules() if name)
    member_ids = {id(module) for module in named.values()}
    return [_resolve_one(layer, named, member_ids, model, inner) for layer in layers]


def _resolve_one(layer: LayerSpec, named: dict, member_ids: set, model: nn.Module, inner: nn.Module) -> nn.Module:
    if isinstance(layer, str):
        if layer not in named:
            examples = ", ".join(repr(name) for name in list(named)[1:6])
            raise ValueError(
                f"layer {layer!r} is not inside the model; pass a name from "
                f"model.named_modules() (for example {examples})"
            )
        layer = named[layer]
    elif not isinstance(layer, nn.Module):
        raise TypeError(f"a target layer must be an nn.Module or a dotted name, not {type(layer).__name__}")
    elif id(layer) not in member_ids:
        raise ValueError(
            f"layer {type(layer).__name__} is not inside the model; pass a module from model.named_modules()"
        )
    # A wrapper outputs what the model inside it outputs.
    return inner if layer is model else layer


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """``'layer4.2'``, ``(the model itself)``, or ``(unnamed)`` for a module not inside ``model``."""
    for name, module in model.named_modules():
        if module is layer:
            return repr(name) if name else "(the model itself)"
    return "(unnamed)"
