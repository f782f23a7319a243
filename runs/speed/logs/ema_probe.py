"""Probe: would an exponential moving average of the weights help the default run? (validation only)

Runs `train_hf.main` unchanged (same trajectory, same batches) with a callback that keeps moving
averages of the weights for several decays and, at every checkpoint, saves each average and the raw
weights as model folders under OUTPUT_DIR/avg<decay>/step<N> (avg0 = the raw weights), for
`runs/synth/logs/score.py` to score afterwards on the validation split and RHVoice.

Usage: python runs/speed/logs/ema_probe.py [train_hf.py flags] (from the repository root)
"""
import copy, sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import TrainerCallback
import train_hf

DECAYS = (0.99, 0.995, 0.998)


class Averages(TrainerCallback):
    def __init__(self):
        self.shadows = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        params = [p.detach() for p in model.parameters()]
        if self.shadows is None:
            self.shadows = {decay: [p.clone() for p in params] for decay in DECAYS}
        t = state.global_step
        for decay, shadow in self.shadows.items():
            torch._foreach_lerp_(shadow, params, 1 - min(decay, (1 + t) / (10 + t)))

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        for decay, shadow in [(0, None), *self.shadows.items()]:
            folder = Path(args.output_dir) / f"avg{decay}" / f"step{state.global_step}"
            snapshot = copy.deepcopy(model)
            if shadow is not None:
                with torch.no_grad():
                    for p, s in zip(snapshot.parameters(), shadow):
                        p.copy_(s)
            snapshot.save_pretrained(folder)
            processing_class.save_pretrained(folder)


build = train_hf.ASRTrainer.__init__  # (train_hf's methods call super(ASRTrainer, self): patch, do not subclass)


def with_averages(self, *args, callbacks=None, **kwargs):
    build(self, *args, callbacks=[*(callbacks or []), Averages()], **kwargs)


train_hf.ASRTrainer.__init__ = with_averages
train_hf.main(sys.argv[1:])
