"""bRoPE forward+backward with the betweenness score as one torch.autograd.Function (both distance sequences and
their gradients by hand, the distance summed over heads and P without flattening), against bench row 4's bRoPE
and plain RoPE: the bench's shapes (1, 4, S, 128), 21 interleaved rounds of ~50 ms, 2 threads. Not adopted.

    python runs/speed/logs/brope_score_function.py 128; ... 1500
"""
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brope_asr import BetweennessShift, BRoPEASRConfig, Rotation, rope_frequencies, rotary_angles  # noqa: E402
from rotation_halves import interleaved_rounds  # noqa: E402
from tools.bench_brope_asr import brope, rope  # noqa: E402


class Score(torch.autograd.Function):
    """(B, H, S, P) -> (B, S - 2k) score of each full centred triple, distances over (H, P) together."""

    @staticmethod
    def forward(ctx, z, k, eps):
        length = z.shape[-2]
        near_diff, far_diff = z[..., k:, :] - z[..., :-k, :], z[..., 2 * k :, :] - z[..., : -2 * k, :]
        near = (near_diff.square().sum((1, 3)) + eps**2).sqrt()  # (B, S - k)
        far = (far_diff.square().sum((1, 3)) + eps**2).sqrt()  # (B, S - 2k)
        total = near[..., : length - 2 * k] + near[..., k:]
        score = far / total
        ctx.save_for_backward(near_diff, far_diff, near, far, total, score)
        ctx.k = k
        return score

    @staticmethod
    def backward(ctx, grad):
        near_diff, far_diff, near, far, total, score = ctx.saved_tensors
        k = ctx.k
        grad_far = grad / total
        grad_total = -grad_far * score
        grad_near = F.pad(grad_total, (0, k)) + F.pad(grad_total, (k, 0))
        grad_z = near_diff.new_zeros(*near_diff.shape[:2], near_diff.shape[2] + k, near_diff.shape[3])
        near_part = near_diff * (grad_near / near)[:, None, :, None]
        far_part = far_diff * (grad_far / far)[:, None, :, None]
        grad_z[..., k:, :] += near_part
        grad_z[..., :-k, :] -= near_part
        grad_z[..., 2 * k :, :] += far_part
        grad_z[..., : -2 * k, :] -= far_part
        return grad_z, None, None


def brope_function(q, k, v, shift, inv_freq):
    offset = shift.offset
    score = F.pad(Score.apply(shift.proj(v), offset, 1e-6), (offset, offset))[:, None]  # (B, 1, S)
    positions = torch.arange(q.shape[-2]) + shift.max_shift * torch.tanh(shift.gate) * score
    angles = rotary_angles(positions, inv_freq)
    return Rotation.apply(q, angles), Rotation.apply(k, angles)


def main():
    torch.set_num_threads(2)
    length = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    config = BRoPEASRConfig(d_model=512, encoder_attention_heads=4, decoder_attention_heads=4, use_betweenness=True)
    torch.manual_seed(0)
    shift = BetweennessShift(config, 4)
    nn.init.constant_(shift.gate, 0.5)
    inv_freq = rope_frequencies(128, 10000.0)
    q, k, v = (torch.randn(1, 4, length, 128, requires_grad=True) for _ in range(3))
    leaves = [q, k, v, *shift.parameters()]
    reference = brope(q, k, v, shift, inv_freq)
    reference_grad = torch.autograd.grad(sum(x.sum() for x in reference), leaves)
    out = brope_function(q, k, v, shift, inv_freq)
    grad = torch.autograd.grad(sum(x.sum() for x in out), leaves)
    print(f"S={length}: outputs differ by {max((a - b).abs().max().item() for a, b in zip(reference, out)):.1e}, gradients by "
          f"{max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(reference_grad, grad)):.1e} (relative)")

    def train(fn, leaves):
        return lambda: torch.autograd.grad(sum(x.sum() for x in fn()), leaves)

    calls = {"plain RoPE": train(lambda: rope(q, k, inv_freq), [q, k]),
             "bRoPE (brope_asr)": train(lambda: brope(q, k, v, shift, inv_freq), leaves),
             "bRoPE, score as one Function": train(lambda: brope_function(q, k, v, shift, inv_freq), leaves)}
    times = interleaved_rounds(calls)
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(times["plain RoPE"], t))
        print(f"S={length} {name}: {statistics.median(t) * 1e6:.0f} us, plain RoPE / this {ratio:.3f}")


if __name__ == "__main__":
    main()
