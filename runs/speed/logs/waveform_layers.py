"""The waveform front end's strided convolutions, forward and backward, batch 8 x 3 s, 2 threads, in three forms:
nn.Conv1d on (B, C, L) as the model runs them; one matrix product on a strided view of (B, L, C) that puts a
stride's samples side by side (output t reads blocks t and t + 1, kernel 2 s); and brope_asr.conv_frames.
Then the whole front end in the second form against the model's. Medians of 9 (layers) and 15 (whole)
interleaved samples; model FLOP/s of the nn.Conv1d form.

    python runs/speed/logs/waveform_layers.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from brope_asr import HOP_LENGTH, WAVEFORM_STRIDES, BRoPEASRConfig, WaveformFrontEnd, batch_inputs, conv_frames, lengths_to_mask  # noqa: E402
from tools.bench_brope_asr import random_clips  # noqa: E402


def blocks(x, conv):
    """conv (kernel 2 s, stride s, padded s // 2 and s - s // 2) on (B, L, C): one matrix product, no copies of x."""
    s, c_out = conv.stride[0], conv.out_channels
    x = F.pad(x, (0, 0, s // 2, s - s // 2))
    b, n, c = x.shape
    kernel = conv.weight.permute(0, 2, 1).reshape(c_out, 2, s * c).transpose(0, 1).reshape(2 * c_out, s * c)
    y = F.linear(x.reshape(b, n // s, s * c), kernel)  # (B, L / s + 1, 2 C_out): each block against both halves
    return y[:, :-1, :c_out] + y[:, 1:, c_out:] + conv.bias


def front_end_blocks(self, waveform, valid):
    """WaveformFrontEnd.forward with `blocks` in (B, L, C) layout."""
    lengths = valid.sum(1) * HOP_LENGTH
    keep = lengths_to_mask(lengths, waveform.shape[1]).to(waveform.dtype)
    mean = (waveform * keep).sum(1, keepdim=True) / lengths[:, None]
    var = ((waveform - mean).square() * keep).sum(1, keepdim=True) / lengths[:, None]
    h = ((waveform - mean) * torch.rsqrt(var + 1e-7) * keep)[:, :, None]
    for conv, stride in zip(self.convs, WAVEFORM_STRIDES):
        lengths = lengths // stride
        h = F.gelu(blocks(h, conv)) * lengths_to_mask(lengths, h.shape[1] // stride)[:, :, None].to(h.dtype)
    return h


def clock(fn, calls=10):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    length, channels = 3 * 16000, (1, 16, 32, 64, 128)
    for i, s in enumerate(WAVEFORM_STRIDES):
        conv = nn.Conv1d(channels[i], channels[i + 1], 2 * s, stride=s)
        x = torch.randn(8, channels[i], length, requires_grad=i > 0)  # the first layer's input needs no gradient
        frames = x.detach().transpose(1, 2).contiguous().requires_grad_(i > 0)
        forms = {
            "nn.Conv1d": lambda: conv(F.pad(x, (s // 2, s - s // 2))).sum().backward(),
            "strided view": lambda: blocks(frames, conv).sum().backward(),
            "conv_frames": lambda: conv_frames(F.pad(frames, (0, 0, s // 2, s - s // 2)), conv).sum().backward(),
        }
        times = {name: [] for name in forms}
        for fn in forms.values():
            fn()
        for _ in range(9):
            for name, fn in forms.items():
                times[name].append(clock(fn))
        flops = 2 * 8 * (length // s) * channels[i + 1] * channels[i] * 2 * s * (3 if i else 2)
        conv_seconds = statistics.median(times["nn.Conv1d"])
        print(f"layer {i + 1}: {channels[i]} -> {channels[i + 1]} channels, stride {s}, {length} -> {length // s} positions: "
              + ", ".join(f"{name} {statistics.median(t) * 1e3:.2f} ms" for name, t in times.items())
              + f"; nn.Conv1d at {flops / conv_seconds / 1e9:.0f} GFLOP/s")
        length //= s

    config = BRoPEASRConfig.from_preset("small", input_mode="both")
    front_end = WaveformFrontEnd(config)
    inputs = batch_inputs(random_clips(8, 3), config)
    waveform, valid = inputs["waveform"], inputs["attention_mask"]
    with torch.no_grad():
        difference = (front_end(waveform, valid) - front_end_blocks(front_end, waveform, valid)).abs().max().item()
    model_form = lambda: front_end(waveform, valid).sum().backward()  # noqa: E731
    view_form = lambda: front_end_blocks(front_end, waveform, valid).sum().backward()  # noqa: E731
    model_form(), view_form()
    pairs = [(clock(model_form, 5), clock(view_form, 5)) for _ in range(15)]
    print(f"whole front end, forward+backward: nn.Conv1d {statistics.median(a for a, _ in pairs) * 1e3:.1f} ms, "
          f"strided view {statistics.median(b for _, b in pairs) * 1e3:.1f} ms, "
          f"{statistics.median(a / b for a, b in pairs):.2f}x; outputs differ by {difference:.1e}")


if __name__ == "__main__":
    main()
