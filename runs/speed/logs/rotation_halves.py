"""Rotation's forward and backward of q and k: the old form (torch.cat of the halves) against brope_asr's
(each half written in place), median of 15 interleaved pairs, 2 threads; plain and shifted angles.

    python runs/speed/logs/rotation_halves.py > runs/speed/logs/rotation_halves.txt
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from brope_asr import Rotation, rotary_angles, rope_frequencies, rotate  # noqa: E402


class CatRotation(torch.autograd.Function):  # brope_asr.Rotation as it was before a73444c
    @staticmethod
    def forward(ctx, x, angles):
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        y = rotate(x, cos, sin)
        ctx.save_for_backward(y if ctx.needs_input_grad[1] else None, cos, sin)
        ctx.angles_shape, ctx.angles_dtype = angles.shape, angles.dtype
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, cos, sin = ctx.saved_tensors
        g1, g2 = grad_y.chunk(2, dim=-1)
        grad_x = torch.cat((g1 * cos + g2 * sin, g2 * cos - g1 * sin), dim=-1) if ctx.needs_input_grad[0] else None
        grad_angles = None
        if ctx.needs_input_grad[1]:
            y1, y2 = y.chunk(2, dim=-1)
            grad_angles = (y1 * g2 - y2 * g1).sum_to_size(ctx.angles_shape).to(ctx.angles_dtype)
        return grad_x, grad_angles


def clock(fn, seconds=0.05):
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return elapsed / calls


def main():
    torch.set_num_threads(2)
    # (8, 4, 150, 128) twice: contiguous, and as the model's queries and keys are, a (B, S, H, Dh) projection seen
    # as (B, H, S, Dh) ("transposed").
    for shape, transposed in [((1, 4, 128, 128), False), ((8, 4, 75, 32), False), ((8, 4, 150, 128), False),
                              ((8, 4, 150, 128), True), ((1, 4, 1500, 128), False)]:
        torch.manual_seed(0)
        if transposed:
            leaves = [torch.randn(shape[0], shape[2], shape[1], shape[3], requires_grad=True) for _ in range(2)]
            q, k = (leaf.transpose(1, 2) for leaf in leaves)
        else:
            q, k = leaves = [torch.randn(*shape, requires_grad=True) for _ in range(2)]
        plain = rotary_angles(torch.arange(shape[2]), rope_frequencies(shape[-1], 10000.0))
        shifted = (plain + torch.rand(1, 1, shape[2], 1)).requires_grad_()  # one shift per token, as bRoPE's
        old = torch.autograd.grad((CatRotation.apply(q, shifted) * q.detach()).sum(), [leaves[0], shifted])
        new = torch.autograd.grad((Rotation.apply(q, shifted) * q.detach()).sum(), [leaves[0], shifted])
        difference = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(old, new))
        for label, angles in (("plain", plain), ("shifted", shifted)):
            wrt = leaves + ([angles] if angles.requires_grad else [])

            def call(cls, angles=angles, wrt=wrt):
                return lambda: torch.autograd.grad((cls.apply(q, angles).sum() + cls.apply(k, angles).sum()), wrt)

            old_call, new_call = call(CatRotation), call(Rotation)
            for _ in range(10):
                old_call(), new_call()
            old_times, new_times = [], []
            for _ in range(15):
                old_times.append(clock(old_call))
                new_times.append(clock(new_call))
            speedup = statistics.median(a / b for a, b in zip(old_times, new_times))
            print(f"{shape}{' transposed' if transposed else ''} {label}: cat {statistics.median(old_times) * 1e6:.0f} us, in place "
                  f"{statistics.median(new_times) * 1e6:.0f} us, {speedup:.2f}x; gradients differ by {difference:.1e} (relative)")


if __name__ == "__main__":
    main()
