"""fold-batchnorm: fold inference batch norm into the conv2d or linear before it.

    batch_norm(conv2d(x, W, b), mean, var, g, beta)
      = conv2d(x, W * s, (b - mean) * s + beta)     with s = g / sqrt(var + eps)

applied per output channel.  Matches only when the conv/linear feeds nothing but
the batch norm and every operand involved is a param; the arithmetic runs in
float64 and is stored back in the params' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sliver.passes.base import Pass, register
from sliver.passes.rewrite import RewritePattern, apply_patterns, single_user


class FoldBatchNormIntoProducer(RewritePattern):
    roots = ("batch_norm",)

    def match_and_rewrite(self, bn, module) -> bool:
        x = bn.operands[0]
        producer = x.producer
        if producer is None or producer.kind not in ("conv2d", "linear") or not single_user(module, x):
            return False
        if producer.kind == "linear" and x.type.rank != 2:
            return False  # batch norm's channel axis is 1; linear's is the last
        data = [module.param_data(v) for v in producer.operands[1:] + bn.operands[1:]]
        if any(d is None for d in data):
            return False
        w = data[0]
        bias = data[1] if len(producer.operands) == 3 else np.zeros(w.shape[0], w.dtype)
        mean, var, *affine = data[len(producer.operands) - 1:]
        gamma = affine[0] if affine else np.ones_like(mean)
        beta = affine[1] if len(affine) > 1 else np.zeros_like(mean)

        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + bn.attrs["eps"])
        new_w = (w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        new_b = ((bias.astype(np.float64) - mean) * scale + beta).astype(w.dtype)

        base = producer.operands[1].name.removesuffix(".weight")
        w_val = module.add_param(f"{base}.weight", new_w, before=producer)
        b_val = module.add_param(f"{base}.bias", new_b, before=producer)
        folded = module.add_op(producer.kind, [producer.operands[0], w_val, b_val], producer.attrs, before=bn,
                               names=[module.fresh_name(x.name)])
        module.replace_all_uses_with(bn.result, folded.result)
        old = [v.producer for v in producer.operands[1:] + bn.operands[1:]]
        module.erase(bn)
        module.erase(producer)
        # Drop the weights and statistics nothing else uses, so the folded params
        # can take over their names.
        for param in old:
            if param.module is module and not param.result.uses:
                module.erase(param)
        for value, name in ((w_val, f"{base}.weight"), (b_val, f"{base}.bias"), (folded.result, x.name)):
            if not module.name_taken(name):
                module.rename(value, name)
        return True


@register
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold inference batch norms into the preceding conv2d / linear."""

    name = "fold-batchnorm"

    def run(self, module):
        return apply_patterns(module, [FoldBatchNormIntoProducer()])
