"""Independent float64 references for the transformer-native methods (LeGrad, attention
rollout, gradient-weighted rollout): each model's blocks written out by hand from its
weights (layer norm, q/k/v, softmax(q·kᵀ/√d) formed explicitly, output projection, MLP),
so the attention maps and their gradients never come from the library's capture.

A model is described by :class:`Spec`: its blocks' weights in one layout, the head as a
function of tokens (the class token's output, and every token's output: LeGrad scores
the head's output for the mean of block l's tokens), the number of prefix tokens and the patch grid.
The tokens that enter the first block are read with a hook on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F

Weights = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class BlockWeights:
    norm1: Tuple[torch.Tensor, torch.Tensor, float]
    qkv: Weights  # (3D, D), (3D,)
    proj: Weights
    norm2: Tuple[torch.Tensor, torch.Tensor, float]
    fc1: Weights
    fc2: Weights
    heads: int


@dataclass
class Spec:
    blocks: List[BlockWeights]
    head: Callable[[torch.Tensor], torch.Tensor]  # tokens -> the model's output (class token / pooled)
    token_head: Callable[[torch.Tensor], torch.Tensor]  # tokens -> an output per token (LeGrad)
    prefix: int
    grid: Tuple[int, int]


def norm(x: torch.Tensor, weights) -> torch.Tensor:
    weight, bias, eps = weights
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def ln(module) -> tuple:
    return (module.weight, module.bias, module.eps)


def lin(module) -> Weights:
    return (module.weight, module.bias)


def block(x: torch.Tensor, w: BlockWeights) -> Tuple[torch.Tensor, torch.Tensor]:
    """One pre-norm block; returns (output tokens, attention (B, heads, N, N))."""
    batch, tokens, dim = x.shape
    q, k, v = (norm(x, w.norm1) @ w.qkv[0].T + w.qkv[1]).split(dim, dim=-1)
    q, k, v = (t.reshape(batch, tokens, w.heads, dim // w.heads).permute(0, 2, 1, 3) for t in (q, k, v))
    attention = torch.softmax(q @ k.transpose(-1, -2) / (dim // w.heads) ** 0.5, dim=-1)
    mixed = (attention @ v).permute(0, 2, 1, 3).reshape(batch, tokens, dim)
    x = x + mixed @ w.proj[0].T + w.proj[1]
    hidden = F.gelu(norm(x, w.norm2) @ w.fc1[0].T + w.fc1[1])
    return x + hidden @ w.fc2[0].T + w.fc2[1], attention


def run(spec: Spec, tokens: torch.Tensor):
    """All blocks: (outputs per block, attentions per block)."""
    outputs, attentions = [], []
    x = tokens
    for weights in spec.blocks:
        x, attention = block(x, weights)
        outputs.append(x)
        attentions.append(attention)
    return outputs, attentions


def to_map(relevance: torch.Tensor, spec: Spec, size) -> torch.Tensor:
    """(B, N) relevance → patch grid, min-max to [0, 1], bilinear to ``size``, min-max
    again (every map of the library spans [0, 1] at the input's size)."""
    patches = relevance[:, spec.prefix :].reshape(relevance.shape[0], *spec.grid)
    resized = F.interpolate(scale(patches)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return scale(resized)


def scale(maps: torch.Tensor) -> torch.Tensor:
    low = maps.flatten(1).min(dim=1).values[:, None, None]
    high = maps.flatten(1).max(dim=1).values[:, None, None]
    return (maps - low) / (high - low)


def legrad(spec: Spec, tokens: torch.Tensor, score: Callable, size) -> torch.Tensor:
    outputs, attentions = run(spec, tokens.detach())
    layers = []
    for z, attention in zip(outputs, attentions):
        pooled = z.mean(dim=1, keepdim=True)  # every token's mean, then the head
        (gradient,) = torch.autograd.grad(score(spec.token_head(pooled)), attention, retain_graph=True)
        layers.append(gradient.clamp(min=0).mean(dim=1).mean(dim=1))
    return to_map(sum(layers) / len(layers), spec, size)


def rollout_of(mixings: List[torch.Tensor], prefix: int) -> torch.Tensor:
    """Per image, in plain loops: R = Â_L ⋯ Â_1, Â = (M + I) / rowsum; the class row."""
    rows = []
    for image in range(mixings[0].shape[0]):
        result = torch.eye(mixings[0].shape[-1], dtype=torch.float64)
        for mixing in mixings:
            a = mixing[image] + torch.eye(mixing.shape[-1], dtype=torch.float64)
            result = (a / a.sum(dim=1, keepdim=True)) @ result
        rows.append(result[0] if prefix else result.mean(dim=0))
    return torch.stack(rows)


def discard(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per image: the int(ratio·N²) smallest entries set to 0, entry (0, 0) kept."""
    out = fused.clone()
    for image in range(fused.shape[0]):
        flat = out[image].flatten()
        count = int(flat.numel() * ratio)
        order = torch.argsort(fused[image].flatten())[:count]
        flat[order[order != 0]] = 0
        out[image] = flat.reshape(fused.shape[1:])
    return out


def attention_rollout(spec: Spec, tokens: torch.Tensor, size, fusion: str = "mean", ratio: float = 0.0):
    with torch.no_grad():
        _, attentions = run(spec, tokens)
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.max(1).values, "min": lambda a: a.min(1).values}[fusion]
    return to_map(rollout_of([discard(fuse(a), ratio) for a in attentions], spec.prefix), spec, size)


def grad_rollout(spec: Spec, tokens: torch.Tensor, score: Callable, size) -> torch.Tensor:
    outputs, attentions = run(spec, tokens.detach())
    gradients = torch.autograd.grad(score(spec.head(outputs[-1])), attentions)
    weighted = [(g * a).clamp(min=0).mean(dim=1) for g, a in zip(gradients, attentions)]
    return to_map(rollout_of([w.detach() for w in weighted], spec.prefix), spec, size)


def first_block_input(model, first_block, x: torch.Tensor) -> torch.Tensor:
    """The tokens entering ``first_block`` in a plain forward of ``model``."""
    seen = []
    handle = first_block.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


# ---------------------------------------------------------------- per origin
def timm_spec(model, grid) -> Spec:
    blocks = [
        BlockWeights(
            ln(b.norm1),
            lin(b.attn.qkv),
            lin(b.attn.proj),
            ln(b.norm2),
            lin(b.mlp.fc1),
            lin(b.mlp.fc2),
            b.attn.num_heads,
        )
        for b in model.blocks
    ]

    def tokens(z):
        return norm(z, ln(model.norm)) @ model.head.weight.T + model.head.bias

    return Spec(blocks, lambda z: tokens(z)[:, 0], tokens, model.num_prefix_tokens, grid)


def torchvision_spec(model, grid) -> Spec:
    blocks = [
        BlockWeights(
            ln(b.ln_1),
            (b.self_attention.in_proj_weight, b.self_attention.in_proj_bias),
            lin(b.self_attention.out_proj),
            ln(b.ln_2),
            lin(b.mlp[0]),
            lin(b.mlp[3]),
            b.self_attention.num_heads,
        )
        for b in model.encoder.layers
    ]

    def tokens(z):
        return norm(z, ln(model.encoder.ln)) @ model.heads.head.weight.T + model.heads.head.bias

    return Spec(blocks, lambda z: tokens(z)[:, 0], tokens, 1, grid)


def open_clip_spec(visual, grid) -> Spec:
    blocks = [
        BlockWeights(
            ln(b.ln_1),
            (b.attn.in_proj_weight, b.attn.in_proj_bias),
            lin(b.attn.out_proj),
            ln(b.ln_2),
            lin(b.mlp.c_fc),
            lin(b.mlp.c_proj),
            b.attn.num_heads,
        )
        for b in visual.transformer.resblocks
    ]

    def tokens(z):
        return norm(z, ln(visual.ln_post)) @ visual.proj

    return Spec(blocks, lambda z: tokens(z)[:, 0], tokens, 1, grid)


def huggingface_spec(model, grid) -> Spec:
    blocks = []
    for b in model.vit.layers:
        a = b.attention
        qkv = (
            torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
            torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
        )
        blocks.append(
            BlockWeights(
                ln(b.layernorm_before),
                qkv,
                lin(a.o_proj),
                ln(b.layernorm_after),
                lin(b.mlp.fc1),
                lin(b.mlp.fc2),
                a.num_attention_heads,
            )
        )

    def tokens(z):
        return norm(z, ln(model.vit.layernorm)) @ model.classifier.weight.T + model.classifier.bias

    return Spec(blocks, lambda z: tokens(z)[:, 0], tokens, 1, grid)


def huggingface_clip_spec(model, grid) -> Spec:
    blocks = []
    for b in model.vision_model.encoder.layers:
        a = b.self_attn
        qkv = (
            torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
            torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
        )
        blocks.append(
            BlockWeights(
                ln(b.layer_norm1), qkv, lin(a.out_proj), ln(b.layer_norm2), lin(b.mlp.fc1), lin(b.mlp.fc2), a.num_heads
            )
        )

    def tokens(z):
        return norm(z, ln(model.vision_model.post_layernorm)) @ model.visual_projection.weight.T

    return Spec(blocks, lambda z: tokens(z)[:, 0], tokens, 1, grid)
