"""torch.ao FakeQuantize modules made export-friendly for the duration of an export."""

from __future__ import annotations


def export_friendly_fake_quant(model) -> list:
    """torch.ao's FakeQuantize modules branch on buffers (``observer_enabled``…), which
    torch.export cannot capture.  For the export each one runs as the fake-quant op it
    applies, with its current scale and zero point and its observer off (inference);
    returns the patched modules (the caller removes the patch).  A module whose observer
    is still enabled keeps re-estimating its qparams in torch's own eval forward; call
    ``model.apply(torch.ao.quantization.disable_observer)`` to compare like with like."""
    import torch
    from torch.ao.quantization import FakeQuantizeBase

    patched = []
    for m in model.modules():
        if not isinstance(m, FakeQuantizeBase):
            continue
        per_channel = m.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)
        learnable = not isinstance(m, torch.ao.quantization.FakeQuantize)
        symmetric = m.qscheme in (torch.per_channel_symmetric, torch.per_tensor_symmetric)

        def forward(x, m=m, on=bool(m.fake_quant_enabled[0]), per_channel=per_channel, learnable=learnable,
                    symmetric=symmetric):
            if not on:
                return x
            zp = torch.zeros_like(m.zero_point) if learnable and symmetric else m.zero_point
            if learnable and per_channel:
                return torch._fake_quantize_learnable_per_channel_affine(x, m.scale, zp, m.ch_axis, m.quant_min,
                                                                        m.quant_max, 1.0)
            if learnable:
                return torch._fake_quantize_learnable_per_tensor_affine(x, m.scale, zp, m.quant_min, m.quant_max, 1.0)
            if per_channel:
                return torch.fake_quantize_per_channel_affine(x, m.scale, zp, m.ch_axis, m.quant_min, m.quant_max)
            return torch.fake_quantize_per_tensor_affine(x, m.scale, zp, m.quant_min, m.quant_max)

        m.forward = forward
        patched.append(m)
    return patched
