"""Matrix products: ``relax.linear`` / ``relax.matmul`` legalized to ``matmul``
blocks ``C[…, m, n] += A[…, m, k] * B[…, k, n]`` (linear's weight is transposed
to [K, N] by constant folding, so N is contiguous in B and C).

Micro-kernel: ``rt`` rows of A x ``nv`` vectors of N in registers, the k loop
outside it; batch and the outer tiles run in parallel.  With batch-1 inference
(M = 1) this is a GEMV vectorized over N."""

from __future__ import annotations

from sliver.backends.tvm.schedules.common import CPU, NotApplicable, block_name, iter_kinds, tile_reduction

NAMES = ("matmul", "T_matmul", "NT_matmul", "T_batch_matmul", "dense", "T_dense")


def match(sch, block) -> bool:
    name = block_name(sch, block)
    kinds = iter_kinds(sch, block)
    return any(name.startswith(n) for n in NAMES) and kinds.endswith("R") and kinds.count("R") == 1


def schedule(sch, block, cpu: CPU) -> list:
    if not match(sch, block):
        raise NotApplicable("not a matmul")
    return tile_reduction(sch, block, cpu, max_vectors=2)
