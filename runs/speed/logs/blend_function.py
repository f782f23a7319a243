"""Two probes behind `blended_scores`' choice of form, 2 threads, forward+backward of `attend_to_scores`:
1. the rescaled form (`rescaled_product_scores`, autograd) against the summed one at long lengths, Dh = 128:
   time (median of interleaved pairs) and peak bytes of live tensors (the bench's PeakMemory);
2. the rescaled form as a `torch.autograd.Function` whose backward keeps no (Sq, Sk) matrix (its four gradients
   from two 2 Dh-wide products), gradcheck-tested in float64, against autograd through the rescaled form.
   Tried and not adopted (README, One product for the blend).

    python runs/speed/logs/blend_function.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import brope_asr  # noqa: E402
from brope_asr import NORM_EPS, attend_to_scores  # noqa: E402
from tools.bench_brope_asr import PeakMemory  # noqa: E402

torch.set_num_threads(2)


class RescaledScores(torch.autograd.Function):
    """S = q.k^T * (c + a x y^T), x = 1/|q|, y = 1/|k|; backward from dS alone (nothing (Sq, Sk) kept)."""

    @staticmethod
    def forward(ctx, q, k, inverse_q, inverse_k, c, a):  # q (B,H,Sq,Dh), k (B,H,Sk,Dh), inverse_q/_k (...,S,1), c, a (H,1,1)
        ctx.save_for_backward(q, k, inverse_q, inverse_k, c, a)
        rescale = torch.addcmul(c, a * inverse_q, inverse_k.transpose(-1, -2))
        return (q @ k.transpose(-1, -2)).mul_(rescale)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, k, inverse_q, inverse_k, c, a = ctx.saved_tensors
        width = q.shape[-1]
        by_key = grad @ torch.cat((k, k * inverse_k), dim=-1)  # sum_j g_ij k_j, sum_j g_ij y_j k_j
        by_query = grad.transpose(-1, -2) @ torch.cat((q, q * inverse_q), dim=-1)
        key_sum, key_scaled = by_key[..., :width], by_key[..., width:]
        query_sum, query_scaled = by_query[..., :width], by_query[..., width:]
        q_dot = (q * key_scaled).sum(-1, keepdim=True)  # sum_j g_ij D_ij y_j
        k_dot = (k * query_scaled).sum(-1, keepdim=True)
        return (c * key_sum + (a * inverse_q) * key_scaled, c * query_sum + (a * inverse_k) * query_scaled,
                a * q_dot, a * k_dot, (q * key_sum).sum((-1, -2), keepdim=True).sum(0),
                (inverse_q * q_dot).sum((-1, -2), keepdim=True).sum(0))


def function_scores(q, k, blend, temperature):
    b, tau = blend.view(-1, 1, 1), temperature.view(-1, 1, 1)
    inverse_q = q.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS).reciprocal()
    inverse_k = k.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS).reciprocal()
    return RescaledScores.apply(q, k, inverse_q, inverse_k, (1 - b) * q.shape[-1] ** -0.5, b * tau)


def call(shape, scores):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=generator).requires_grad_() for _ in range(3))
    blend = torch.full((shape[1],), 0.5, requires_grad=True)
    temperature = torch.full((shape[1],), shape[-1] ** 0.5, requires_grad=True)
    mask = torch.ones(shape[0], 1, 1, shape[2], dtype=torch.bool)
    mask[0, ..., shape[2] // 2 :] = False

    def run():
        out = attend_to_scores(scores(q, k, blend, temperature), v, mask)
        return torch.autograd.grad(out.sum(), [q, k, v, blend, temperature])

    return run


def clock(fn, number):
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def compare(title, shapes, new, old, new_name, old_name, pairs):
    print(title)
    for shape in shapes:
        calls = {new_name: call(shape, new), old_name: call(shape, old)}
        peaks = {}
        for name, fn in calls.items():
            with PeakMemory() as counter:
                fn()
            peaks[name] = counter.peak / 2**20
        number = max(1, round(0.05 / clock(calls[new_name], 1)))
        times = [(clock(calls[new_name], number), clock(calls[old_name], number)) for _ in range(pairs)]
        print(f"  {shape}: {new_name} {statistics.median(t[0] for t in times) * 1e3:.2f} ms, {old_name} "
              f"{statistics.median(t[1] for t in times) * 1e3:.2f} ms, {new_name} {statistics.median(o / n for n, o in times):.2f}x "
              f"as fast; peak {peaks[new_name]:.1f} / {peaks[old_name]:.1f} MiB", flush=True)


torch.manual_seed(0)
q, k = (torch.randn(2, 3, n, 4, dtype=torch.float64, requires_grad=True) for n in (5, 6))
blend, temperature = torch.rand(3, dtype=torch.float64, requires_grad=True), (1 + 5 * torch.rand(3, dtype=torch.float64)).requires_grad_()
print("Function: gradcheck", torch.autograd.gradcheck(function_scores, (q, k, blend, temperature)),
      "; max difference from rescaled_product_scores",
      f"{(function_scores(q, k, blend, temperature) - brope_asr.rescaled_product_scores(q, k, blend, temperature)).abs().max().item():.1e}")
compare("rescaled (autograd) against summed, long lengths:", [(8, 4, 750, 128), (2, 4, 1500, 128)],
        brope_asr.rescaled_product_scores, brope_asr.summed_product_scores, "rescaled", "summed", 9)
compare("Function against the rescaled form through autograd:", [(8, 4, 75, 32), (8, 4, 150, 128), (8, 4, 20, 32), (8, 4, 750, 128)],
        function_scores, brope_asr.rescaled_product_scores, "Function", "autograd", 15)
