"""bRoPE against plain RoPE (bench row 4's functions and shapes, (1, 4, S, 128)), interleaved, 15 pairs, 2 threads:
the forward+backward and forward ratios at each S, then where bRoPE's forward+backward goes at S=128 and 512: the
rotation of q and k with angle gradients (at given shifted positions) and the betweenness score alone.

    python runs/speed/logs/brope_parts.py                    # with keep_freed_memory, as the bench runs
    python runs/speed/logs/brope_parts.py --default-malloc   # glibc's malloc as it is
"""
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brope_asr import BetweennessShift, BRoPEASRConfig, Rotation, keep_freed_memory, rope_frequencies, rotary_angles  # noqa: E402
from tools.bench_brope_asr import ROPE_HEAD_DIM, ROPE_HEADS, brope, rope  # noqa: E402
from waveform_layers import clock  # noqa: E402


def main():
    if "--default-malloc" not in sys.argv:
        keep_freed_memory()
    torch.set_num_threads(2)
    config = BRoPEASRConfig(d_model=ROPE_HEADS * ROPE_HEAD_DIM, encoder_attention_heads=ROPE_HEADS,
                            decoder_attention_heads=ROPE_HEADS, use_betweenness=True)
    torch.manual_seed(0)
    shift = BetweennessShift(config, ROPE_HEADS)
    torch.nn.init.constant_(shift.gate, 0.5)
    torch.nn.init.normal_(shift.proj.weight)
    inv_freq = rope_frequencies(ROPE_HEAD_DIM, config.rope_theta)
    print(f"malloc: {'glibc default' if '--default-malloc' in sys.argv else 'keep_freed_memory'}; median of 15 interleaved samples")
    for length in (128, 512, 1500, 3000):
        q, k, v = (torch.randn(1, ROPE_HEADS, length, ROPE_HEAD_DIM, requires_grad=True) for _ in range(3))
        positions = (torch.arange(length) + torch.rand(1, 1, length)).requires_grad_()
        leaves = [q, k, v, *shift.parameters()]

        def brope_train():
            torch.autograd.grad(sum(x.sum() for x in brope(q, k, v, shift, inv_freq)), leaves)

        def rope_train():
            torch.autograd.grad(sum(x.sum() for x in rope(q, k, inv_freq)), [q, k])

        def brope_forward():
            with torch.no_grad():
                brope(q, k, v, shift, inv_freq)

        def rope_forward():
            with torch.no_grad():
                rope(q, k, inv_freq)

        def score_train():  # the shift alone: projection, distances, score, gate
            torch.autograd.grad(shift(v, causal=False, valid=None).sum(), [v, *shift.parameters()])

        def rotation_with_angle_gradients():  # q and k rotated at shifted positions that need gradients
            angles = rotary_angles(positions, inv_freq)
            torch.autograd.grad(Rotation.apply(q, angles).sum() + Rotation.apply(k, angles).sum(), [q, k, positions])

        calls = max(3, 20000 // length)
        fns = [brope_train, rope_train, brope_forward, rope_forward]
        if length <= 512:
            fns += [score_train, rotation_with_angle_gradients]
        for fn in fns:
            clock(fn, calls)
        times = {fn.__name__: [] for fn in fns}
        for _ in range(15):
            for fn in fns:
                times[fn.__name__].append(clock(fn, calls))
        us = {name: 1e6 * statistics.median(t) for name, t in times.items()}
        ratio = {p: statistics.median(r / b for r, b in zip(times[f"rope_{p}"], times[f"brope_{p}"])) for p in ("train", "forward")}
        print(f"S={length}: fwd+bwd bRoPE {us['brope_train']:.0f} us, RoPE {us['rope_train']:.0f} us, ratio {ratio['train']:.3f}; "
              f"fwd {us['brope_forward']:.0f} / {us['rope_forward']:.0f} us, ratio {ratio['forward']:.3f}")
        if length <= 512:
            print(f"  parts, fwd+bwd: score alone {us['score_train']:.0f} us; rotation of q and k with angle gradients "
                  f"{us['rotation_with_angle_gradients']:.0f} us")


if __name__ == "__main__":
    main()
