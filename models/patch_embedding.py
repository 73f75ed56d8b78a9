"""Patch embeddings as a matmul over non-overlapping patches on CPU (the ViT patch-embedding conv).

A ViT cuts the image into p x p patches with a `Conv2d(C, D, kernel_size=p, stride=p)`. A conv
whose stride equals its kernel, without padding, dilation or groups, is exactly a matrix product:
each output position sees one patch, so (B, C, H, W) -> rows of flattened patches (B*L, C*p*p) @
weight (D, C*p*p).T (+ bias). On CPU, oneDNN's input gradient of that conv is pathological (tiny-clip:
14 ms per PGD step against a 1.25 ms forward; about a third of an image attack's time), while the
matmul's input gradient is a plain GEMM: 6x faster at tiny-clip's size, 2.7x at ViT-B-16's.
Outputs differ from the conv's by float summation order only (~1e-6). The matmul runs only where
the input needs a gradient (image attacks, MAT's inner PGD): elsewhere the conv is faster.

`use_patch_matmul(module)` switches every qualifying `nn.Conv2d` of a module to
`PatchMatmulConv2d` by swapping its class, so parameters, state-dict keys, hooks, `save_pretrained`,
checkpoints and `isinstance(conv, nn.Conv2d)` are unchanged; `use_patch_matmul(module, False)`
switches them back to the library's `nn.Conv2d`. Other tensors (CUDA, ...) keep `nn.Conv2d.forward`:
cuDNN handles these convs, and the matmul was not measured there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchMatmulConv2d(nn.Conv2d):
    """A non-overlapping patch conv (stride = kernel, no padding, dilation or groups) computed as a
    matmul over patches where its input gradient is wanted on CPU; `nn.Conv2d.forward` elsewhere.

    Only there: without an input gradient the conv is the faster one (measured, 1 thread: forward
    1.4x, forward + weight gradient 1.3x at ViT-B-16's size), and its outputs stay the library's
    bit for bit (evaluation, clean training steps). Made by `use_patch_matmul`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or input.dim() != 4 or not (input.requires_grad and torch.is_grad_enabled()):
            return super().forward(input)
        batch, channels, height, width = input.shape
        ph, pw = self.kernel_size
        rows, cols = height // ph, width // pw
        if rows * ph != height or cols * pw != width:  # as the conv: trailing pixels that fill no patch are dropped
            input = input[:, :, :rows * ph, :cols * pw]
        patches = (input.reshape(batch, channels, rows, ph, cols, pw)
                   .permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, ph, pw): the weight's (C, ph, pw) order
                   .reshape(batch * rows * cols, channels * ph * pw))
        out = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        # (B, D, rows, cols) as a view of (B, rows, cols, D): the `flatten(2).transpose(1, 2)` every ViT
        # applies next is then a view too
        return out.reshape(batch, rows, cols, self.out_channels).permute(0, 3, 1, 2)


def is_patch_conv(module: nn.Module) -> bool:
    """Whether `module` is a plain `nn.Conv2d` (or an already switched one) that cuts non-overlapping
    patches of more than one pixel: exactly a patch matmul."""
    if type(module) not in (nn.Conv2d, PatchMatmulConv2d):  # subclasses may override forward: left alone
        return False
    padding = module.padding
    # a 1 x 1 conv is a matmul too, but a pointwise layer inside a network (ResNet bottlenecks), whose
    # inputs need gradients in every training step: not a patch embedding, and not measured
    kernel = tuple(module.kernel_size)
    return (kernel != (1, 1) and tuple(module.stride) == kernel and module.groups == 1
            and tuple(module.dilation) == (1, 1) and (padding == "valid" or tuple(padding) == (0, 0)))


def use_patch_matmul(module: nn.Module, enabled: bool = True) -> int:
    """Switch every qualifying conv in `module` to the patch matmul (`enabled`) or back to `nn.Conv2d`;
    returns how many convs qualify."""
    target = PatchMatmulConv2d if enabled else nn.Conv2d
    count = 0
    for child in module.modules():
        if is_patch_conv(child):
            child.__class__ = target
            count += 1
    return count


def uses_patch_matmul(module: nn.Module) -> bool:
    """Whether any conv in `module` runs as a patch matmul."""
    return any(type(child) is PatchMatmulConv2d for child in module.modules())
