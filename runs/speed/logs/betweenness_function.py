"""bRoPE with the betweenness score as an autograd Function with a backward written for it (`Betweenness`, 5876088,
tried and not adopted) against today's code (autograd through the formula), `brope_asr.betweenness_score` swapped
between interleaved samples:
bench row 4's shapes (1, 4, S, 128) and call against plain RoPE, 21 rounds of ~50 ms; then a whole training step
with bRoPE on, bench row 1's models and inputs. 2 threads, after `keep_freed_memory`.

    python runs/speed/logs/betweenness_function.py
"""
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import brope_asr  # noqa: E402
from rotation_halves import interleaved_rounds, module_at  # noqa: E402
from rotation_step import spread, swapped_step  # noqa: E402
from tools.bench_brope_asr import ROPE_HEAD_DIM, ROPE_HEADS, brope, rope  # noqa: E402


def row_4(length: int, autograd, function):
    config = brope_asr.BRoPEASRConfig(d_model=ROPE_HEADS * ROPE_HEAD_DIM, encoder_attention_heads=ROPE_HEADS,
                                      decoder_attention_heads=ROPE_HEADS, use_betweenness=True)
    torch.manual_seed(0)
    shift = brope_asr.BetweennessShift(config, ROPE_HEADS)
    nn.init.constant_(shift.gate, 0.5)  # as the bench: a gate of 0 shifts nothing
    inv_freq = brope_asr.rope_frequencies(ROPE_HEAD_DIM, config.rope_theta)
    q, k, v = (torch.randn(1, ROPE_HEADS, length, ROPE_HEAD_DIM, requires_grad=True) for _ in range(3))
    leaves = [q, k, v, *shift.parameters()]

    def train(score, fn, wrt):
        def call():
            brope_asr.betweenness_score = score
            torch.autograd.grad(sum(x.sum() for x in fn()), wrt)
        return call

    calls = {
        "plain RoPE": train(function, lambda: rope(q, k, inv_freq), [q, k]),
        "bRoPE autograd": train(autograd, lambda: brope(q, k, v, shift, inv_freq), leaves),
        "bRoPE Function": train(function, lambda: brope(q, k, v, shift, inv_freq), leaves),
    }
    grads = {}
    for name in ("bRoPE autograd", "bRoPE Function"):
        brope_asr.betweenness_score = autograd if name == "bRoPE autograd" else function
        grads[name] = torch.autograd.grad(sum(x.sum() for x in brope(q, k, v, shift, inv_freq)), leaves)
    difference = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(*grads.values()))
    times = interleaved_rounds(calls)
    line = f"S={length}: gradients differ by {difference:.1e} (relative);"
    for name, t in times.items():
        line += f" {name} {statistics.median(t) * 1e6:.0f} us"
    ratios = {name: statistics.median(r / o for r, o in zip(times["plain RoPE"], times[name])) for name in ("bRoPE autograd", "bRoPE Function")}
    speedup = statistics.median(b / n for b, n in zip(times["bRoPE autograd"], times["bRoPE Function"]))
    print(f"{line}; plain RoPE / bRoPE {ratios['bRoPE autograd']:.3f} autograd, {ratios['bRoPE Function']:.3f} Function; the Function {speedup:.3f}x as fast", flush=True)


def main():
    torch.set_num_threads(2)
    brope_asr.keep_freed_memory()
    autograd, function = brope_asr.betweenness_score, module_at("5876088").betweenness_score
    for length in (128, 512, 1500, 3000):
        row_4(length, autograd, function)
    for preset in ("small", "base"):
        old, new, ratios, pairs = swapped_step(preset, {"use_betweenness": True}, "betweenness_score", autograd, function)
        print(f"train {preset} with bRoPE: autograd {old * 1e3:.1f} ms, Function {new * 1e3:.1f} ms, {spread(ratios, pairs)}", flush=True)


if __name__ == "__main__":
    main()
