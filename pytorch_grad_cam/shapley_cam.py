"""ShapleyCAM (Cai et al., 2025): GradCAM's weights with a second-order correction,
w_k = mean over positions of (G − ½·H·A)_k, where H·A is the Hessian of the score with
respect to the layer output times that output (one double-backward pass)."""

from __future__ import annotations

from typing import ContextManager, Dict

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.base_cam import BaseCAM, weighted_map
from pytorch_grad_cam.checks import layer_grid
from pytorch_grad_cam.recording import Record


def _math_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` by its composite definition (torch's "math"
    backend): made of differentiable operations, so it has a double backward."""
    return torch.ops.aten._scaled_dot_product_attention_math(  # noqa: SLF001 - the aten op's name
        query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
    )[0]


class _TwiceDifferentiableAttention(TorchFunctionMode):
    """Route ``F.scaled_dot_product_attention`` to its math definition while active.

    torch's fused CPU/GPU attention kernels have no double backward, which the Hessian
    term needs. ``torch.nn.attention.sdpa_kernel`` would pick the math backend too, but
    it sets process-wide flags that other threads would see; a torch-function mode is
    per thread, and it is gone when the call ends."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return _math_attention(*args, **kwargs)
        if func is F.multi_head_attention_forward and not _NEED_WEIGHTS_POSITION < len(args):
            # nn.MultiheadAttention (torchvision's ViT): the mode is not active inside the
            # function it handles, so its inner fused attention would escape; asking for
            # the weights makes it compute attention with bmm and softmax instead.
            wanted = kwargs.get("need_weights", True)
            output, weights = func(*args, **{**kwargs, "need_weights": True})
            return output, (weights if wanted else None)
        return func(*args, **kwargs)


#: The position of ``need_weights`` in ``F.multi_head_attention_forward``'s arguments.
_NEED_WEIGHTS_POSITION = 15


class ShapleyCAM(BaseCAM):
    """w_k = mean_ij (G − ½·HVP)_k with HVP = ∂(G·A)/∂A at fixed A (autograd double
    backward); map = Σ_k w_k·A_k. A linear head after the layer (avgpool + fc) has no
    curvature: HVP = 0 and ShapleyCAM equals GradCAM. With a ``reshape_transform`` the
    transform is applied alike to HVP, A and G (the map uses the reshaped A).
    Attention (``F.scaled_dot_product_attention``, as in timm's ViT/DeiT/Swin, and
    ``nn.MultiheadAttention``, as in torchvision's ViT) runs by its composite definition
    during the call, since the fused kernels have no double backward: no
    ``sdpa_kernel`` wrapper is needed.

    Raises (on a call):
        ValueError: if a target layer's output is not one tensor.
    """

    #: Why ``differentiable`` refuses it (pytorch_grad_cam.differentiable).
    not_differentiable = "its weights need a Hessian product, so a map that carries gradients needs third derivatives"

    def forward_context(self) -> ContextManager:
        """The forward pass picks the attention kernels whose backward the Hessian term
        differentiates again: the twice-differentiable one, on this thread only."""
        return _TwiceDifferentiableAttention()

    def backward(self, loss: torch.Tensor, record: Record, recorder: ActivationsAndGradients) -> None:
        """The gradients G (kept differentiable) and, per layer, the Hessian-vector
        product HVP (``record.extras["hessian_products"]``, reshaped like G)."""
        outputs = recorder.layer_outputs
        if not all(torch.is_tensor(out) for out in outputs):
            raise ValueError("ShapleyCAM needs target layers whose output is one tensor; choose such a layer")
        wanted = [out for out in outputs if out.requires_grad]
        grads = dict(zip(map(id, wanted), torch.autograd.grad(loss, wanted, create_graph=True, allow_unused=True)))
        products: Dict[int, torch.Tensor] = {}
        for index, out in enumerate(outputs):
            grad = grads.get(id(out))
            if grad is None:
                recorder.gradients[index] = None
                continue
            hvp = None
            if grad.requires_grad:
                (hvp,) = torch.autograd.grad(grad, out, grad_outputs=out.detach(), retain_graph=True, allow_unused=True)
            hvp = torch.zeros_like(out) if hvp is None else hvp
            # Set here, after the second pass (whose tensor hooks would overwrite them).
            recorder.gradients[index] = recorder.reshape(grad)
            products[index] = recorder.reshape(hvp)
        record.extras["hessian_products"] = products

    def layer_map(self, record: Record, index: int, eigen_smooth: bool) -> torch.Tensor:
        """Σ_k w_k·A_k with ShapleyCAM's weights from this layer's G and HVP."""
        activations = layer_grid(record, index, self.reshape_transform)
        grads = record.gradients[index].to(activations.dtype)
        hvp = record.extras["hessian_products"][index].to(activations.dtype)
        weights = (grads - 0.5 * hvp).flatten(2).mean(dim=2)
        return weighted_map(weights, activations, eigen_smooth)
