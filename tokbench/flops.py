"""FLOP counting in fvcore's convention (``gmacs_fvcore``: one multiply-add = 1), with the handles tokbench needs.

``count_gmacs`` traces one call with ``fvcore.nn.FlopCountAnalysis`` (TorchScript tracing) and adds:

* ``aten::scaled_dot_product_attention`` (timm's fused attention, which fvcore silently skips):
  q·kᵀ + attn·v = prod(batch dims)·n_q·n_k·(C_h + C_v), i.e. 2·B·H·n_q·n_k·C_h;
* ``aten::matmul`` replaced by a handle that also accepts 1-D operands (matrix·vector, as in the vector-form
  rollout; fvcore's own raises IndexError) and broadcast batch dims (fvcore's undercounts); it equals fvcore's on
  ordinary ≥2-D products: output elements × inner dimension;
* ``aten::mv``, ``aten::dot`` and ``aten::baddbmm`` (the product only, like fvcore's addmm).

Everything else is fvcore's table: linear/addmm/mm/bmm/einsum (MACs), ``_convolution`` (MACs, no bias), layer/group
norm 5 per element with affine (4 without), bilinear upsampling 4 per output element, adaptive average pooling 1 per
input element. Elementwise ops (add, mul, div), softmax and GELU stay uncounted by convention and are reported in
``FlopCount.unsupported``; reshapes, gather/index and the like are in fvcore's silent ignore list.

Tracing removes work whose result only feeds module state (rollout, buffers) and freezes data-dependent sizes:
count each frame kind separately and add the RGTP overhead analytically (``tokbench.flops_ref``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tokbench.errors import ConfigError, TokbenchError
from tokbench.flops_ref import GIGA, ViTArch

SDPA_OP = "aten::scaled_dot_product_attention"
SDPA_MODES = ("handle", "explicit")


@dataclass(frozen=True)
class FlopCount:
    """One traced call: total GMACs, GMACs per fvcore op name, unsupported op name → occurrences, SDPA mode."""

    gmacs: float
    by_operator: dict[str, float]
    unsupported: dict[str, int]
    sdpa_flops: str


# --------------------------------------------------------------------------------------------------------------
# fvcore handles: (inputs, outputs) are torch._C.Value lists of the traced node; they return MACs.


def _shape(value: Any) -> list[int]:
    shape = value.type().sizes() if value.isCompleteTensor() else None
    if shape is None:
        raise TokbenchError(f"fvcore handle: traced value {value.debugName()} has no static shape")
    return list(shape)


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """``scaled_dot_product_attention(q [..., n_q, C_h], k [..., n_k, C_h], v [..., n_k, C_v])``.

    MACs = prod(q.shape[:-1])·n_k·(C_h + C_v) = 2·B·H·n_q·n_k·C_h for 4-D [B, H, N, C_h] inputs; 3-D [B, N, C]
    inputs work the same way. Masks, dropout and causality are ignored (the full score matrix is counted).
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def matmul_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """``torch.matmul`` with any ranks: output elements × inner dimension (1-D operands and broadcasting included)."""
    a = _shape(inputs[0])
    return math.prod(_shape(outputs[0])) * a[-1]


def baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """``baddbmm(input, b1 [B, n, k], b2 [B, k, m])``: B·n·k·m (the add is not counted, as for addmm)."""
    b, n, k = _shape(inputs[1])
    return b * n * k * _shape(inputs[2])[-1]


EXTRA_HANDLES: dict[str, Callable[[list[Any], list[Any]], int]] = {
    "aten::matmul": matmul_flop_jit,
    "aten::mv": matmul_flop_jit,
    "aten::dot": matmul_flop_jit,
    "aten::baddbmm": baddbmm_flop_jit,
}


# --------------------------------------------------------------------------------------------------------------
# Counting


class _CallableModule(nn.Module):
    """Lets FlopCountAnalysis trace a plain callable; a bound method's module is registered for op scoping."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module):
            self.owner = owner

    def forward(self, *inputs: Any) -> Any:
        return self.fn(*inputs)


def count_gmacs(
    fn_or_module: nn.Module | Callable[..., Any], inputs: torch.Tensor | tuple[Any, ...], sdpa: str = "handle"
) -> FlopCount:
    """Trace one call ``fn_or_module(*inputs)`` with fvcore and count its GMACs (fvcore convention).

    sdpa: 'handle' counts fused attention with ``sdpa_flop_jit``; 'explicit' declares that attention runs as
    explicit matmuls (e.g. timm blocks with ``attn.fused_attn = False``) and raises if a fused SDPA call is traced,
    since it would silently count as zero. The module's train/eval mode is left as is; tracing runs without grad.
    """
    if sdpa not in SDPA_MODES:
        raise ConfigError(f"unknown sdpa_flops {sdpa!r}; expected one of {', '.join(SDPA_MODES)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*")
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        from fvcore.nn import FlopCountAnalysis

        module = fn_or_module if isinstance(fn_or_module, nn.Module) else _CallableModule(fn_or_module)
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        analysis = FlopCountAnalysis(module, inputs).set_op_handle(**EXTRA_HANDLES)
        if sdpa == "handle":
            analysis.set_op_handle(SDPA_OP, sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad():
            by_op = analysis.by_operator()
            unsupported = dict(analysis.unsupported_ops())
    if sdpa == "explicit" and SDPA_OP in unsupported:
        raise TokbenchError(
            f"sdpa='explicit' but the traced call uses fused attention ({unsupported[SDPA_OP]} x {SDPA_OP}); "
            "use sdpa='handle' or build the model with fused attention disabled"
        )
    return FlopCount(
        gmacs=sum(by_op.values()) / GIGA,
        by_operator={op: macs / GIGA for op, macs in sorted(by_op.items())},
        unsupported=dict(sorted(unsupported.items())),
        sdpa_flops=sdpa,
    )


def dense_vit_gmacs(
    model: nn.Module, img_size: int | tuple[int, int], sdpa: str = "handle", *, in_chans: int = 3
) -> FlopCount:
    """fvcore GMACs of one image [1, in_chans, H, W] through ``model.forward_features`` (or ``forward``)."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    fn = getattr(model, "forward_features", model)
    return count_gmacs(fn, torch.zeros(1, in_chans, h, w), sdpa=sdpa)


def vit_closed_form_gmacs(
    arch: ViTArch, *, final_norm: bool = True, fc_norm: bool = False, num_classes: int = 0
) -> float:
    """What fvcore counts for one image through a plain timm ViT (batch 1), in GMACs.

    patch conv N·C·in_chans·p²; per block 2 LayerNorms 2·5·N'·C, QKV N'·C·3C, attention 2·H·N'²·C_h (SDPA handle
    or explicit matmuls), projection N'·C², MLP 2·N'·C·C_mlp; the final norm 5·N'·C (timm's ``norm``, an Identity
    when ``fc_norm`` is used); head: ``fc_norm`` on the pooled C vector 5·C and the classifier C·num_classes
    (fvcore counts no bias). ``forward_features`` = defaults; ``forward`` = set num_classes (and fc_norm).
    """
    if arch.window_size is not None or arch.rel_pos:
        raise ConfigError("the fvcore closed form covers plain global-attention ViTs only")
    c, n_all = arch.dim, arch.num_tokens
    patch_embed = arch.num_patches * c * arch.in_chans * arch.patch**2
    block = 2 * 5 * n_all * c + n_all * c * 4 * c + 2 * arch.heads * n_all**2 * arch.head_dim
    block += 2 * n_all * c * arch.mlp_dim
    head = 5 * n_all * c * final_norm + 5 * c * fc_norm + c * num_classes
    return (patch_embed + arch.depth * block + head) / GIGA
