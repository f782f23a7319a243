"""Tried, not adopted: q and k rotated by one autograd Function (cos and sin once, one angle gradient for both)
against brope_asr's `Rotation` applied to each, for plain RoPE and for bRoPE, at bench row 4's shapes (1, 4, S, 128):
15 interleaved rounds of the four, 2 threads, after `keep_freed_memory`. Both get faster, plain RoPE more, so the
row's ratio does not rise.

    python runs/speed/logs/pair_rotation.py
"""
import statistics
import sys
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brope_asr import (BetweennessShift, BRoPEASRConfig, _rotate_halves, keep_freed_memory,
                       rope_frequencies, rotary_angles)
from tools.bench_brope_asr import ROPE_HEAD_DIM, ROPE_HEADS, brope, rope
from waveform_layers import clock


class PairRotation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, angles):
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
        yq, yk = _rotate_halves(q, cos, sin), _rotate_halves(k, cos, sin)
        need = ctx.needs_input_grad[2]
        ctx.save_for_backward(yq if need else None, yk if need else None, cos, sin)
        ctx.angles_shape, ctx.angles_dtype = angles.shape, angles.dtype
        return yq, yk

    @staticmethod
    @once_differentiable
    def backward(ctx, gq, gk):
        yq, yk, cos, sin = ctx.saved_tensors
        neg = -sin
        grad_q = _rotate_halves(gq, cos, neg) if ctx.needs_input_grad[0] else None
        grad_k = _rotate_halves(gk, cos, neg) if ctx.needs_input_grad[1] else None
        grad_angles = None
        if ctx.needs_input_grad[2]:
            (q1, q2), (gq1, gq2) = yq.chunk(2, -1), gq.chunk(2, -1)
            (k1, k2), (gk1, gk2) = yk.chunk(2, -1), gk.chunk(2, -1)
            t = (q1 * gq2).addcmul_(q2, gq1, value=-1).addcmul_(k1, gk2).addcmul_(k2, gk1, value=-1)
            grad_angles = t.sum_to_size(ctx.angles_shape).to(ctx.angles_dtype)
        return grad_q, grad_k, grad_angles


def rope2(q, k, inv_freq):
    return PairRotation.apply(q, k, rotary_angles(torch.arange(q.shape[-2]), inv_freq))


def brope2(q, k, v, shift, inv_freq):
    positions = torch.arange(q.shape[-2]) + shift(v, causal=False, valid=None)
    return PairRotation.apply(q, k, rotary_angles(positions, inv_freq))


keep_freed_memory(); torch.set_num_threads(2)
config = BRoPEASRConfig(d_model=ROPE_HEADS * ROPE_HEAD_DIM, encoder_attention_heads=ROPE_HEADS,
                        decoder_attention_heads=ROPE_HEADS, use_betweenness=True)
torch.manual_seed(0)
shift = BetweennessShift(config, ROPE_HEADS)
torch.nn.init.constant_(shift.gate, 0.5); torch.nn.init.normal_(shift.proj.weight)
inv_freq = rope_frequencies(ROPE_HEAD_DIM, config.rope_theta)
for length in (128, 512, 1500, 3000):
    calls = max(3, 20000 // length)
    q, k, v = (torch.randn(1, ROPE_HEADS, length, ROPE_HEAD_DIM, requires_grad=True) for _ in range(3))
    leaves = [q, k, v, *shift.parameters()]
    a = torch.autograd.grad(sum(x.sum() * (i + 1) for i, x in enumerate(brope(q, k, v, shift, inv_freq))), leaves)
    b = torch.autograd.grad(sum(x.sum() * (i + 1) for i, x in enumerate(brope2(q, k, v, shift, inv_freq))), leaves)
    diff = max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))
    fns = {
        "brope": lambda: torch.autograd.grad(sum(x.sum() for x in brope(q, k, v, shift, inv_freq)), leaves),
        "rope": lambda: torch.autograd.grad(sum(x.sum() for x in rope(q, k, inv_freq)), [q, k]),
        "brope2": lambda: torch.autograd.grad(sum(x.sum() for x in brope2(q, k, v, shift, inv_freq)), leaves),
        "rope2": lambda: torch.autograd.grad(sum(x.sum() for x in rope2(q, k, inv_freq)), [q, k]),
    }
    for f in fns.values():
        clock(f, calls)
    times = {name: [] for name in fns}
    for _ in range(15):
        for name, f in fns.items():
            times[name].append(clock(f, calls))
    med = {name: statistics.median(t) * 1e6 for name, t in times.items()}
    r1 = statistics.median(a / b for a, b in zip(times["rope"], times["brope"]))
    r2 = statistics.median(a / b for a, b in zip(times["rope2"], times["brope2"]))
    r3 = statistics.median(a / b for a, b in zip(times["rope"], times["brope2"]))
    print(f"S={length}: grads equal to {diff:.1e}; fwd+bwd us: bRoPE {med['brope']:.0f} -> {med['brope2']:.0f}, "
          f"RoPE {med['rope']:.0f} -> {med['rope2']:.0f}; ratio now {r1:.3f}, both paired {r2:.3f}, "
          f"(today's RoPE / paired bRoPE {r3:.3f})")
