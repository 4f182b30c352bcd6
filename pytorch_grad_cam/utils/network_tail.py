"""Isolate the part of a network that comes after a given layer, so that a layer's
output can be changed and only the rest of the network recomputed (AblationCAM).

The tail is extracted with ``torch.fx`` symbolic tracing; it shares the model's
modules and parameters (nothing is copied, nothing in the model changes). Where
the model cannot be traced, or where the output also depends on values computed
before the layer by another path, there is no tail, and the caller falls back to
re-running the whole model with the layer's output replaced by a forward hook.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import fx, nn


def extract_tail(model: nn.Module, layer: nn.Module) -> Tuple[Optional[fx.GraphModule], str]:
    """The network after ``layer`` as a module mapping the layer's output to the model's output.

    Returns:
        (tail, "") on success; (None, reason) where no tail can be isolated.
    """
    names = {id(module): name for name, module in model.named_modules()}
    layer_name = names.get(id(layer))
    if layer_name is None:
        return None, "the layer is not inside the model"
    if layer is model:
        return None, "the target layer is the whole model"

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return module is layer or super().is_leaf_module(module, qualified_name)

    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any trace failure means "no tail"
        return None, f"torch.fx cannot trace the model ({type(error).__name__}: {error})"
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer_name]
    if len(calls) != 1:
        return None, f"the layer is called {len(calls)} times in the traced forward pass"
    layer_node = calls[0]

    depends_on_input = set()
    after_layer = {layer_node}
    for node in graph.nodes:
        if node.op == "placeholder" or any(arg in depends_on_input for arg in node.all_input_nodes):
            depends_on_input.add(node)
        if node is not layer_node and any(arg in after_layer for arg in node.all_input_nodes):
            after_layer.add(node)

    tail = fx.Graph()
    env = {layer_node: tail.placeholder("layer_output")}
    for node in graph.nodes:
        if node is layer_node or node.op == "placeholder":
            continue
        needs_only_tail = all(
            arg in after_layer or arg not in depends_on_input for arg in node.all_input_nodes
        )
        if node.op == "output":
            if not needs_only_tail:
                return None, "the model output also depends on values from before the layer"
            tail.output(fx.graph.map_arg(node.args[0], lambda n: env[n]))
            break
        if node in after_layer or node not in depends_on_input:
            if not needs_only_tail:
                # A skip connection from before the layer into the tail: such a value
                # would have to be cached too. Re-run the whole model instead.
                return None, "the network after the layer reuses values from before it"
            env[node] = tail.node_copy(node, lambda n: env[n])
    module = fx.GraphModule(model, tail)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module, ""


def replaced_output_runner(
    model: nn.Module, layer: nn.Module, image: torch.Tensor
) -> Callable[[torch.Tensor], object]:
    """A function that runs the whole ``model`` on copies of ``image`` (1, C, ...) with
    ``layer``'s output replaced by the given batch (the slow fallback for a tail)."""

    def run(layer_output: torch.Tensor) -> object:
        handle = layer.register_forward_hook(lambda module, inputs, output: layer_output)
        try:
            return model(image.expand(layer_output.shape[0], *image.shape[1:]))
        finally:
            handle.remove()

    return run
