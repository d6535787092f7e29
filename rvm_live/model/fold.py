"""Fold inference-mode BatchNorm into the preceding convolution (fewer kernels, same result)."""

from __future__ import annotations

import torch
from torch import nn


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        folded_bias = (bias - bn.running_mean) * scale + bn.bias.detach()
    if conv.bias is None:
        conv.bias = nn.Parameter(folded_bias)
    else:
        conv.bias.data.copy_(folded_bias)


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """Every (parent, conv attribute, bn attribute) whose BatchNorm directly follows its conv, in
    registration order (which is also execution order for RVM's modules)."""
    pairs = []
    for parent in model.modules():
        children = list(parent.named_children())
        for (cname, conv), (bname, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                pairs.append((parent, cname, bname))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv→BatchNorm pair in place (the BatchNorm becomes Identity); returns ``model``.

    Only valid for inference: the running statistics are baked into the convolution."""
    for parent, cname, bname in conv_bn_pairs(model):
        _fold_pair(getattr(parent, cname), getattr(parent, bname))
        setattr(parent, bname, nn.Identity())
    return model


def is_folded(model: nn.Module) -> bool:
    """True when no BatchNorm layer is left."""
    return not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
