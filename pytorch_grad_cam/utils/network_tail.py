"""Isolate the part of a network that comes after a given layer, so that a layer's
output can be changed and only the rest of the network recomputed (AblationCAM).

The tail is extracted with ``torch.fx`` symbolic tracing; it shares the model's
modules and parameters (nothing is copied, nothing in the model changes). Tensors
the tail needs from before the layer (skip connections around it) come from the
traced head, once per image, broadcast over the copies; sizes read from tensors
(``B, H, W, C = x.shape``) are recomputed in the tail from those broadcast tensors,
so the batch dimension is the number of copies. Where the model cannot be traced
there is no tail, and the caller falls back to re-running the whole model with the
layer's output replaced by a forward hook.
"""

from __future__ import annotations

import operator
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

# The whole-model fallback (whole_model.py) stays importable from here.
from pytorch_grad_cam.utils.whole_model import batch_size_of, replaced_output_runner  # noqa: F401

# --------------------------------------------------------------------------- shape values
_METADATA_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}
_METADATA_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "get_device"}
_SIZE_ARITHMETIC = {
    operator.getitem,
    operator.add,
    operator.sub,
    operator.mul,
    operator.floordiv,
    operator.truediv,
    operator.mod,
    operator.neg,
    operator.pow,
    max,
    min,
}


def _is_metadata_read(node: fx.Node) -> bool:
    """``x.shape`` / ``x.size(...)`` / ``x.dim()``...: a value about a tensor, not of it."""
    if node.op == "call_method":
        return node.target in _METADATA_METHODS
    return (
        node.op == "call_function"
        and node.target is getattr
        and len(node.args) == 2
        and node.args[1] in _METADATA_ATTRIBUTES
    )


def _is_shape_value(node: fx.Node, shape_values: set) -> bool:
    """A metadata read, or Python arithmetic/indexing on shape values only
    (``x.shape[0]``, ``H // 7``, ``B * n``). Such values are recomputed in the tail
    from the tensors they were read from, never frozen from the one-image head."""
    if _is_metadata_read(node):
        return True
    inputs = node.all_input_nodes
    return (
        node.op == "call_function"
        and node.target in _SIZE_ARITHMETIC
        and bool(inputs)
        and all(arg in shape_values for arg in inputs)
    )


# --------------------------------------------------------------------------- side effects
_IN_PLACE_OPERATORS = {
    "iadd",
    "isub",
    "imul",
    "itruediv",
    "ifloordiv",
    "imod",
    "ipow",
    "imatmul",
    "iand",
    "ior",
    "ixor",
    "ilshift",
    "irshift",
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


# --------------------------------------------------------------------------- what follows the layer
#: Activations with f(x) -> 0 as x -> -inf: a large negative input switches them off.
_ZEROING_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
    nn.Softplus,
    nn.Sigmoid,
    nn.Hardsigmoid,
)
_ZEROING_FUNCTIONS = {
    torch.relu,
    torch.relu_,
    F.relu,
    F.relu_,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.mish,
    F.softplus,
    torch.sigmoid,
    F.sigmoid,
    F.hardsigmoid,
}
_ZEROING_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_"}
#: Element-wise, channel-preserving steps that carry a large negative value on to an
#: activation unchanged in sign: adding another tensor, dropout/identity in eval,
#: rearranging elements, per-channel pooling.
_PASSING_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Flatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_PASSING_FUNCTIONS = {
    operator.add,
    operator.iadd,
    torch.add,
    F.dropout,
    torch.flatten,
    torch.reshape,
    torch.permute,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
}
_PASSING_METHODS = {
    "add",
    "add_",
    "view",
    "reshape",
    "permute",
    "flatten",
    "contiguous",
    "clone",
    "transpose",
}
_SUBTRACTION_FUNCTIONS = {operator.sub, operator.isub, torch.sub}
_SUBTRACTION_METHODS = {"sub", "sub_"}


def _step_kind(user: fx.Node, source: fx.Node, modules: dict) -> Optional[str]:
    """ "zero" for an activation with f(-inf) = 0, "pass" for an element-wise step that
    carries a large negative ``source`` on unchanged in sign, None for anything else."""
    if user.op == "call_module":
        module = modules.get(user.target)
        if isinstance(module, _ZEROING_MODULES):
            return "zero"
        return "pass" if isinstance(module, _PASSING_MODULES) else None
    if user.op == "call_function":
        zeroing, passing, subtracting = _ZEROING_FUNCTIONS, _PASSING_FUNCTIONS, _SUBTRACTION_FUNCTIONS
    elif user.op == "call_method":
        zeroing, passing, subtracting = _ZEROING_METHODS, _PASSING_METHODS, _SUBTRACTION_METHODS
    else:
        return None
    if user.target in zeroing:
        return "zero"
    if user.target in passing:
        return "pass"
    first = user.args[0] if user.args else None
    if user.target in subtracting or user.target is operator.getitem:
        # x - y keeps x's sign for a large negative x (y - x flips it); x[...] selects.
        return "pass" if first is source else None
    return None


def _zeroes_in_place(user: fx.Node, modules: dict) -> bool:
    """An activation that switches its input off in place (``ReLU(inplace=True)``, ``relu_``)."""
    if user.op == "call_module":
        return bool(getattr(modules.get(user.target), "inplace", False))
    name = user.target if user.op == "call_method" else getattr(user.target, "__name__", "")
    return bool(user.kwargs.get("inplace")) or (name.endswith("_") and not name.endswith("__"))


def switched_off_by_activation(graph: fx.Graph, layer_node: fx.Node, modules: dict) -> bool:
    """Whether every use of the layer's output (its sizes aside) reaches an activation
    with f(-inf) = 0 (ReLU, GELU, SiLU, ...) through element-wise, channel-preserving
    steps only: False where it may first reach anything else (a LayerNorm, Linear,
    convolution, BatchNorm, matmul, the model's output). Uses after an in-place
    activation of a value (``out += skip; torch.relu_(out)``) read the switched-off value."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    pending, seen = [layer_node], set()
    while pending:
        node = pending.pop()
        switched_at = None  # where an in-place activation switched ``node`` itself off
        for user in sorted(node.users, key=order.__getitem__):
            if switched_at is not None and order[user] > switched_at:
                break
            if user in seen or _is_metadata_read(user):
                continue
            seen.add(user)
            kind = _step_kind(user, node, modules)
            if kind is None:
                return False
            if kind == "pass":
                pending.append(user)
            elif _zeroes_in_place(user, modules) and user.args and user.args[0] is node:
                switched_at = order[user]
    return bool(seen)


def _depends_on(graph: fx.Graph, source: fx.Node) -> bool:
    """Whether the graph's output depends on the values of ``source`` (not only on its sizes)."""
    depends = {source}
    for node in graph.nodes:
        if node.op == "output":
            return any(arg in depends for arg in node.all_input_nodes)
        if not _is_metadata_read(node) and any(arg in depends for arg in node.all_input_nodes):
            depends.add(node)
    return False


# --------------------------------------------------------------------------- the tail
class NetworkTail:
    """The network after a layer: ``tail.bind(image)`` gives a function from a batch of
    (changed) layer outputs for that one image to the model's outputs.

    Tensors that the tail needs from before the layer (a skip connection around it) are
    computed once per image by the head of the traced graph and broadcast over the
    batch; sizes are recomputed in the tail from the broadcast tensors.

    Attributes:
        reads_layer: whether the model's output depends on the layer's output values.
        switched_off: whether every use of the layer's output first reaches an
            activation with f(-inf) = 0 through element-wise steps only (see
            :func:`switched_off_by_activation`).
    """

    def __init__(
        self,
        tail: fx.GraphModule,
        head: Optional[fx.GraphModule],
        values_read: Sequence[bool] = (),
        reads_layer: bool = True,
        switched_off: bool = False,
    ) -> None:
        self.tail = tail
        self.head = head
        self.values_read = list(values_read)  # per skipped value: read beyond its sizes
        self.reads_layer = reads_layer
        self.switched_off = switched_off

    def bind(self, image: torch.Tensor) -> Optional[Callable[[torch.Tensor], object]]:
        """The tail for ``image`` (1, C, ...), or None where a tensor from before the
        layer has no leading batch dimension of 1 (it cannot be broadcast). Other
        values (None, flags) are passed on as they are."""
        if self.head is None:
            return self.tail
        with torch.no_grad():
            skipped = self.head(image)
        if any(torch.is_tensor(value) and (value.ndim == 0 or value.shape[0] != 1) for value in skipped):
            return None

        def broadcast(value: object, copies: int, read: bool) -> object:
            if not torch.is_tensor(value):
                return value
            value = value.expand(copies, *value.shape[1:])
            # Own copies where the values are read: the tail may add into them in place.
            return value.clone() if read else value

        def run(layer_output: object) -> object:
            copies = batch_size_of(layer_output)
            return self.tail(
                layer_output,
                *(broadcast(v, copies, read) for v, read in zip(skipped, self.values_read)),
            )

        return run


def extract_tail(model: nn.Module, layer: nn.Module) -> Tuple[Optional[NetworkTail], str]:
    """The network after ``layer``, extracted by ``torch.fx`` tracing.

    Returns:
        (tail, "") on success; (None, reason) where no tail can be isolated (the model
        cannot be traced, or never calls the layer).
    """
    graph, layer_node, reason = _trace_to_layer(model, layer)
    if graph is None or layer_node is None:
        return None, reason
    depends_on_input, after_layer, shape_values = _classify_nodes(graph, layer_node)
    tail, skipped, after_layer_copies = _tail_graph(graph, layer_node, depends_on_input, after_layer, shape_values)
    # Everything after the layer stays; unused constants (parameters read only before
    # the layer) go.
    tail_module = _graph_module(model, tail, keep=lambda node: node in after_layer_copies)
    placeholders = {node.target: node for node in tail_module.graph.nodes if node.op == "placeholder"}
    values_read = [
        any(not _is_metadata_read(user) for user in placeholders[f"skipped_{i + 1}"].users)
        if f"skipped_{i + 1}" in placeholders
        else False
        for i in range(len(skipped))
    ]
    head_module = _head_module(model, graph, after_layer, skipped) if skipped else None
    modules = dict(model.named_modules())
    return (
        NetworkTail(
            tail_module,
            head_module,
            values_read,
            reads_layer=_depends_on(tail_module.graph, placeholders["layer_output"]),
            switched_off=switched_off_by_activation(graph, layer_node, modules),
        ),
        "",
    )


def _trace_to_layer(model: nn.Module, layer: nn.Module) -> Tuple[Optional[fx.Graph], Optional[fx.Node], str]:
    """``model``'s fx graph with ``layer`` kept as one call, and the node of its (last)
    call: (graph, node, ""), or (None, None, reason) where there is none."""
    names = {id(module): name for name, module in model.named_modules()}
    layer_name = names.get(id(layer))
    if layer_name is None:
        return None, None, "the layer is not inside the model"
    if layer is model:
        return None, None, "the target layer is the whole model"

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return module is layer or super().is_leaf_module(module, qualified_name)

    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any trace failure means "no tail"
        return None, None, f"torch.fx cannot trace the model ({type(error).__name__}: {error})"
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer_name]
    if not calls:
        return None, None, "the layer is not called in the traced forward pass"
    # A module called several times (a shared activation) is recorded at its last call,
    # so the tail starts there; earlier calls belong to the head.
    return graph, calls[-1], ""


def _classify_nodes(graph: fx.Graph, layer_node: fx.Node) -> Tuple[set, set, set]:
    """The nodes that depend on the model's input, those computed from the layer's
    output (the layer's node included), and the shape values (see :func:`_is_shape_value`)."""
    depends_on_input = set()
    after_layer = {layer_node}
    shape_values = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(arg in depends_on_input for arg in node.all_input_nodes):
            depends_on_input.add(node)
        if node is not layer_node and any(arg in after_layer for arg in node.all_input_nodes):
            after_layer.add(node)
        if _is_shape_value(node, shape_values):
            shape_values.add(node)
    return depends_on_input, after_layer, shape_values


def _tail_graph(
    graph: fx.Graph, layer_node: fx.Node, depends_on_input: set, after_layer: set, shape_values: set
) -> Tuple[fx.Graph, List[fx.Node], set]:
    """The tail's graph, taking the layer's output as ``layer_output`` and each value from
    before the layer it reads as ``skipped_<i>``; also those skipped nodes of ``graph``, in
    placeholder order, and the tail's copies of the nodes after the layer."""
    tail = fx.Graph()
    env = {layer_node: tail.placeholder("layer_output")}
    skipped: List[fx.Node] = []  # tensors (and other values) from before the layer that the tail reads

    def tail_value(node: fx.Node) -> fx.Node:
        if node not in env:  # only input-dependent nodes from before the layer get here
            if node in shape_values:
                # Recomputed from the tensor it was read from (broadcast to the copies),
                # so that e.g. the batch size is the number of copies, not 1.
                env[node] = tail.node_copy(node, tail_value)
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
    return tail, skipped, {env[node] for node in after_layer if node in env}


def _head_module(model: nn.Module, graph: fx.Graph, after_layer: set, skipped: List[fx.Node]) -> fx.GraphModule:
    """The head: what comes before the layer, up to the values the tail reads (``skipped``,
    returned as a tuple in that order)."""
    head = fx.Graph()
    head_env: dict = {}
    for node in graph.nodes:
        if node.op != "output" and node not in after_layer:
            head_env[node] = head.node_copy(node, lambda n: head_env[n])
    head.output(tuple(head_env[node] for node in skipped))
    return _graph_module(model, head, keep=lambda node: False)


# --------------------------------------------------------------------------- the fallback
