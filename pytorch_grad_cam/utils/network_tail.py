"""Isolate the part of a network that comes after a given layer, so that a layer's
output can be changed and only the rest of the network recomputed (AblationCAM).

The tail is extracted with ``torch.fx`` symbolic tracing; it shares the model's
modules and parameters (nothing is copied, nothing in the model changes). Values
the tail needs from before the layer (skip connections around it) come from the
traced head, once per image. Where the model cannot be traced there is no tail,
and the caller falls back to re-running the whole model with the layer's output
replaced by a forward hook.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import fx, nn


def _is_batch_size(node: fx.Node) -> bool:
    """``x.size(0)`` / ``x.size(dim=0)``: the batch size, the same everywhere in the network."""
    if node.op != "call_method" or node.target != "size":
        return False
    dims = list(node.args[1:]) + list(node.kwargs.values())
    return dims == [0]


_IN_PLACE_OPERATORS = {
    "iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "imatmul",
    "iand", "ior", "ixor", "ilshift", "irshift",
}


def _has_side_effect(node: fx.Node) -> bool:
    """Whether dead-code elimination must keep ``node`` although nothing reads its
    result: in-place operations (``torch.relu_(x)``, ``x += y``, ``ReLU(inplace=True)``)
    change a tensor that is read later, which fx's purity check does not see."""
    if node.op == "call_module":
        return bool(getattr(node.graph.owning_module.get_submodule(node.target), "inplace", False))
    if node.op not in ("call_function", "call_method"):
        return node.is_impure()
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    in_place = (name.endswith("_") and not name.endswith("__")) or name in _IN_PLACE_OPERATORS
    return in_place or bool(node.kwargs.get("inplace")) or node.is_impure()


def _graph_module(model: nn.Module, graph: fx.Graph, keep: Callable[[fx.Node], bool]) -> fx.GraphModule:
    module = fx.GraphModule(model, graph)
    module.graph.eliminate_dead_code(is_impure_node=lambda node: keep(node) or _has_side_effect(node))
    module.recompile()
    return module


class NetworkTail:
    """The network after a layer: ``tail.bind(image)`` gives a function from a batch of
    (changed) layer outputs for that one image to the model's outputs.

    Values that the tail needs from before the layer (a skip connection around it) are
    computed once per image by the head of the traced graph and broadcast over the batch;
    ``x.size(0)`` of the input becomes the batch size of the layer outputs.
    """

    def __init__(self, tail: fx.GraphModule, head: Optional[fx.GraphModule]) -> None:
        self.tail = tail
        self.head = head

    def bind(self, image: torch.Tensor) -> Optional[Callable[[torch.Tensor], object]]:
        """The tail for ``image`` (1, C, ...), or None where a tensor from before the
        layer has no leading batch dimension of 1 (it cannot be broadcast). Other
        values (None, flags, sizes) are passed on as they are."""
        if self.head is None:
            return self.tail
        with torch.no_grad():
            skipped = self.head(image)
        if any(torch.is_tensor(value) and (value.ndim == 0 or value.shape[0] != 1) for value in skipped):
            return None

        def run(layer_output: torch.Tensor) -> object:
            copies = layer_output.shape[0]
            return self.tail(
                layer_output,
                # Own copies: the tail may add into a skipped value in place.
                *(v.expand(copies, *v.shape[1:]).clone() if torch.is_tensor(v) else v for v in skipped),
            )

        return run


def extract_tail(model: nn.Module, layer: nn.Module) -> Tuple[Optional[NetworkTail], str]:
    """The network after ``layer``, extracted by ``torch.fx`` tracing.

    Returns:
        (tail, "") on success; (None, reason) where no tail can be isolated (the model
        cannot be traced, or never calls the layer).
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
    if not calls:
        return None, "the layer is not called in the traced forward pass"
    # A module called several times (a shared activation) is recorded at its last call,
    # so the tail starts there; earlier calls belong to the head.
    layer_node = calls[-1]

    depends_on_input = set()
    after_layer = {layer_node}
    for node in graph.nodes:
        if node.op == "placeholder" or any(arg in depends_on_input for arg in node.all_input_nodes):
            depends_on_input.add(node)
        if node is not layer_node and any(arg in after_layer for arg in node.all_input_nodes):
            after_layer.add(node)

    tail = fx.Graph()
    env = {layer_node: tail.placeholder("layer_output")}
    skipped: List[fx.Node] = []  # values from before the layer that the tail reads

    def tail_value(node: fx.Node) -> fx.Node:
        if node not in env:  # only input-dependent nodes from before the layer get here
            if _is_batch_size(node):
                env[node] = tail.call_method("size", (env[layer_node], 0))
            else:
                skipped.append(node)
                env[node] = tail.placeholder(f"skipped_{len(skipped)}")
        return env[node]

    for node in graph.nodes:
        if node is layer_node or node.op == "placeholder":
            continue
        if node.op == "output":
            tail.output(fx.graph.map_arg(node.args[0], tail_value))
            break
        if node in after_layer or node not in depends_on_input:
            env[node] = tail.node_copy(node, tail_value)
    # Everything after the layer stays; unused constants (parameters read only before
    # the layer) go.
    after_layer_copies = {env[node] for node in after_layer if node in env}
    tail_module = _graph_module(model, tail, keep=lambda node: node in after_layer_copies)

    head_module = None
    if skipped:
        # The head: what comes before the layer, up to the values the tail reads.
        head = fx.Graph()
        head_env: dict = {}
        for node in graph.nodes:
            if node.op != "output" and node not in after_layer:
                head_env[node] = head.node_copy(node, lambda n: head_env[n])
        head.output(tuple(head_env[node] for node in skipped))
        head_module = _graph_module(model, head, keep=lambda node: False)
    return NetworkTail(tail_module, head_module), ""


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
