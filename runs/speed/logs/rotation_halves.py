"""Rotation's forward and backward of q and k: the old form (torch.cat of the halves) against brope_asr's
(each half written in place), median of 15 interleaved pairs, 2 threads; plain and shifted angles.

    python runs/speed/logs/rotation_halves.py > runs/speed/logs/rotation_halves.txt
"""
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from brope_asr import Rotation, rotary_angles, rope_frequencies  # noqa: E402


def module_at(commit: str) -> types.ModuleType:
    """brope_asr.py as it was at `commit`, loaded as its own module (the "before" of a comparison)."""
    source = subprocess.run(["git", "show", f"{commit}:brope_asr.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(f"brope_asr_{commit}")
    module.__file__ = str(ROOT / "brope_asr.py")
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def cat_rotation() -> type[torch.autograd.Function]:
    """brope_asr.Rotation as it was before a73444c: `rotate`'s torch.cat of the halves, forward and backward."""
    return module_at("afa0666").Rotation


def clock(fn, seconds=0.05):
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        calls += 1
    return elapsed / calls


def interleaved_rounds(calls: dict, rounds: int = 21, warmup: int = 20) -> dict[str, list[float]]:
    """Seconds per call of each of `calls` (name -> fn) in every round, the calls timed one after another in each
    round (`clock`), after `warmup` calls of each."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(clock(fn))
    return times


def main():
    torch.set_num_threads(2)
    old_rotation = cat_rotation()
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
        old = torch.autograd.grad((old_rotation.apply(q, shifted) * q.detach()).sum(), [leaves[0], shifted])
        new = torch.autograd.grad((Rotation.apply(q, shifted) * q.detach()).sum(), [leaves[0], shifted])
        difference = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(old, new))
        for label, angles in (("plain", plain), ("shifted", shifted)):
            wrt = leaves + ([angles] if angles.requires_grad else [])

            def call(cls, angles=angles, wrt=wrt):
                return lambda: torch.autograd.grad((cls.apply(q, angles).sum() + cls.apply(k, angles).sum()), wrt)

            old_call, new_call = call(old_rotation), call(Rotation)
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
