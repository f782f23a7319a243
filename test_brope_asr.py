"""Tests of brope_asr.py and train_hf.py: each test is named after the property it checks and fails when it breaks.

Run with `python -m pytest test_brope_asr.py -q`. Sections follow brope_asr.py from the config to the
metrics, then train_hf.py and its corpus. Every model comes from `tiny_config` (width 32, one layer each
side unless a test needs more), so the model tests take under a minute (`pytest -m "not slow"`: about
35 s on 2 idle CPU cores); the script tests, marked `slow` (train_hf.py runs, torchrun, the ablation
grid, the benchmark, subprocesses), bring the whole file to about six minutes."""

import argparse
import csv
import ctypes
import functools
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import datasets
import datasets.distributed
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
import transformers

import brope_asr
import train_hf
from brope_asr import (
    SAMPLE_RATE,
    Attention,
    BetweennessShift,
    BRoPEASRConfig,
    BRoPEASRForConditionalGeneration,
    SelfAttention,
)

REPO = Path(__file__).resolve().parent
DATA = REPO / "data"
INPUT_MODES = ("spectrogram", "waveform", "both")
VOCAB = 16  # pad 0, bos 1, eos 2 and 13 ordinary tokens
ALL_FEATURES = dict(
    input_mode="both", use_betweenness=True, blend_attention=True, learned_rope_frequencies=True, ctc_weight=0.5,
    normalize_features=True,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run torch on one thread while these tests run: tensors this small gain nothing from a second
    thread, and on a busy 2-core machine a second thread spin-waits (the overfit test measured 85 s
    with two threads under load, 8 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> BRoPEASRConfig:
    """The one place tests build a config: a model this small runs a forward pass in milliseconds.

    init_std 0.3 (not 0.02) gives a random model outputs that vary visibly with its inputs, so
    "changes" and "does not change" are told apart far above float32 rounding.
    """
    fields = dict(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        betweenness_dim=8,
        max_source_positions=1000,
        max_target_positions=32,
        dropout=0.0,
        init_std=0.3,
    )
    return BRoPEASRConfig(**{**fields, **overrides})


def tiny_model(**overrides) -> BRoPEASRForConditionalGeneration:
    """A model of `tiny_config(**overrides)` in eval mode."""
    return BRoPEASRForConditionalGeneration(tiny_config(**overrides)).eval()


def move_off_init(model: BRoPEASRForConditionalGeneration) -> BRoPEASRForConditionalGeneration:
    """Move every parameter that init sets to a constant to random values, as training would: mixes
    (blend 0.5, gate 0, where bRoPE is plain RoPE), learned frequencies, norms and biases (0, where a
    masked frame stays 0 through a LayerNorm). Then no test passes only because a gate is closed or a
    bias is zero. Draws from torch's seeded generator."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Attention) and module.blend_logit is not None:
                module.blend_logit.uniform_(-2.0, 2.0)
                module.log_temperature.uniform_(0.0, math.log(20.0))
            if isinstance(module, SelfAttention) and module.log_inv_freq is not None:
                module.log_inv_freq.add_(0.1 * torch.randn_like(module.log_inv_freq))
            if isinstance(module, BetweennessShift):
                module.gate.uniform_(0.5, 1.5)  # tanh(gate) in [0.46, 0.91]: shifts near a token
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.LayerNorm)) and module.bias is not None:
                module.bias.normal_(0.0, 0.1)
        if model.encoder.input_blend_logit is not None:
            model.encoder.input_blend_logit.uniform_(-1.0, 1.0)
    return model


def read_metadata() -> list[dict]:
    """The rows of the shipped data/metadata.csv."""
    with open(DATA / "metadata.csv", newline="") as file:
        return list(csv.DictReader(file))


def random_clips(*lengths: int) -> list[torch.Tensor]:
    """Noise clips of the given sample counts, at speech-like level."""
    return [0.1 * torch.randn(length) for length in lengths]


def in_memory(clip: torch.Tensor) -> dict:
    """A dataset audio value holding decoded samples, as `datasets` builds in memory."""
    return {"array": clip.numpy(), "sampling_rate": SAMPLE_RATE}


def audio_inputs(config: BRoPEASRConfig, *lengths: int) -> dict[str, torch.Tensor]:
    """Padded encoder inputs for noise clips of the given sample counts."""
    return brope_asr.batch_inputs(random_clips(*lengths), config)


def decoder_ids(batch: int, length: int) -> torch.Tensor:
    """Random ordinary tokens after the start token."""
    ids = torch.randint(3, VOCAB, (batch, length))
    ids[:, 0] = 1
    return ids


def sine(frequency: float, sampling_rate: int, length: int) -> torch.Tensor:
    """(length,) float64 sin(2 pi f t) sampled at `sampling_rate`."""
    return torch.sin(2 * math.pi * frequency * torch.arange(length, dtype=torch.float64) / sampling_rate)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "field, value",
    [
        ("encoder_attention_heads", 3),  # does not divide d_model = 32
        ("decoder_attention_heads", 0),
        ("encoder_attention_heads", 32),  # head width 1: no channel pair to rotate
        ("betweenness_offset", 0),
        ("ctc_weight", -0.5),
        ("ctc_rescoring_weight", 1.5),
        ("ctc_outputs_per_frame", 0),
        ("label_smoothing", 1.0),
        ("encoder_layers", 0),
        ("decoder_layers", 0),
        ("pad_token_id", VOCAB),
        ("bos_token_id", -1),
        ("eos_token_id", 99),
        ("decoder_start_token_id", VOCAB),
    ],
)
def test_config_rejects_inconsistent_fields(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_from_preset_rejects_unknown_names():
    assert BRoPEASRConfig.from_preset("base", d_model=64).d_model == 64
    with pytest.raises(ValueError, match="small"):
        BRoPEASRConfig.from_preset("huge")


# --------------------------------------------------------------------------------------------- positions


def test_rope_frequencies_are_theta_to_minus_two_i_over_dh():
    assert_close(brope_asr.rope_frequencies(8, 10000.0), torch.tensor([1.0, 0.1, 0.01, 0.001]), atol=1e-9)


def test_rotary_equals_complex_multiplication_of_half_split_pairs():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8)
    positions = 50 * torch.rand(7)
    inv_freq = brope_asr.rope_frequencies(8, 10000.0)
    # Independent reference: channel i and i + Dh/2 form the complex number x_i + j x_{i+Dh/2},
    # multiplied by exp(j p theta_i) [1].
    first, second = x.double().chunk(2, dim=-1)
    angles = positions.double()[:, None] * inv_freq.double()
    rotated = torch.complex(first, second) * torch.polar(torch.ones_like(angles), angles)
    expected = torch.cat((rotated.real, rotated.imag), dim=-1).float()
    assert_close(brope_asr.apply_rotary(x, positions, inv_freq), expected, atol=1e-5)


def test_rotary_keeps_norm_and_is_identity_at_position_zero():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 16)
    inv_freq = brope_asr.rope_frequencies(16, 10000.0)
    rotated = brope_asr.apply_rotary(x, torch.arange(9) * 37.3, inv_freq)
    assert_close(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert_close(brope_asr.apply_rotary(x, torch.zeros(9), inv_freq), x, atol=0.0)
    assert not torch.allclose(rotated[..., 1:, :], x[..., 1:, :], atol=1e-3)


def test_rotation_backward_passes_gradcheck_and_equals_autograd_of_the_formula():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    angles = torch.randn(2, 1, 7, 4, dtype=torch.float64, requires_grad=True)  # one angle per token, all heads
    assert torch.autograd.gradcheck(brope_asr.Rotation.apply, (x, angles))
    y = brope_asr.Rotation.apply(x, angles)
    reference = brope_asr.rotate(x, angles.cos(), angles.sin())
    grad = torch.randn_like(y)
    assert_close(y, reference, atol=1e-12)  # halves written in place: only rounding may differ
    for got, expected in zip(torch.autograd.grad(y, (x, angles), grad), torch.autograd.grad(reference, (x, angles), grad)):
        assert_close(got, expected, atol=1e-12)


def test_rotation_traces_into_one_graph_under_torch_compile():
    # Its halves are written in place (`out=` into strided views), which Dynamo cannot trace: compiled, it
    # must take `rotate` instead, or `--compile` would break the graph at every rotation.
    def rotate_both(q, k, shift):
        angles = brope_asr.rotary_angles(torch.arange(q.shape[-2]) + shift, brope_asr.rope_frequencies(q.shape[-1], 10000.0))
        return brope_asr.Rotation.apply(q, angles), brope_asr.Rotation.apply(k, angles)

    torch.manual_seed(0)
    q, k, shift = torch.randn(2, 4, 16, 8), torch.randn(2, 4, 16, 8), torch.rand(2, 1, 16)
    explanation = torch._dynamo.explain(rotate_both)(q, k, shift)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons


@pytest.mark.parametrize("delta", [3, 0.37])
def test_rope_scores_depend_only_on_relative_offset(delta):
    torch.manual_seed(0)
    q, k = torch.randn(1, 16), torch.randn(1, 16)
    inv_freq = brope_asr.rope_frequencies(16, 10000.0)

    def score(query_position, key_position):
        rotated_q = brope_asr.apply_rotary(q, torch.tensor([query_position]), inv_freq)
        rotated_k = brope_asr.apply_rotary(k, torch.tensor([key_position]), inv_freq)
        return (rotated_q * rotated_k).sum()

    origin = type(delta)(0)  # integer positions stay integer tensors
    at_origin = score(delta, origin)
    for position in (1, 7, 60) if isinstance(delta, int) else (1.0, 7.25, 60.5):
        assert_close(score(position + delta, position), at_origin, atol=1e-4)
    assert abs(score(2 * delta, origin) - at_origin) > 1e-2  # the score does depend on the offset


def test_betweenness_gate_starts_at_its_configured_opening_and_a_gate_of_one_is_refused():
    for opening in (0.0, 0.5, -0.25):
        gates = [m.gate for m in tiny_model(use_betweenness=True, betweenness_gate_init=opening).modules()
                 if isinstance(m, brope_asr.BetweennessShift)]
        assert len(gates) == 2 and all(torch.tanh(g).item() == pytest.approx(opening, abs=1e-6) for g in gates)
    for bad in (1.0, -1.5):
        with pytest.raises(ValueError, match="betweenness_gate_init"):
            tiny_config(use_betweenness=True, betweenness_gate_init=bad)
    with pytest.raises(ValueError, match="betweenness_max_shift"):
        tiny_config(use_betweenness=True, betweenness_max_shift=-1.0)


@pytest.mark.parametrize("zeroed", ["gate", "max_shift"])
def test_betweenness_without_shift_equals_plain_rope(zeroed):
    torch.manual_seed(0)
    plain = move_off_init(tiny_model(blend_attention=True))
    inputs = audio_inputs(plain.config, 3000, 2200)
    ids = decoder_ids(2, 8)
    expected = plain(**inputs, decoder_input_ids=ids).logits

    def brope_logits(max_shift, gate):
        brope = tiny_model(blend_attention=True, use_betweenness=True, betweenness_max_shift=max_shift)
        missing, unexpected = brope.load_state_dict(plain.state_dict(), strict=False)
        assert not unexpected and missing and all(".betweenness." in name for name in missing)
        with torch.no_grad():
            for module in brope.modules():
                if isinstance(module, BetweennessShift):
                    module.gate.fill_(gate)
        return brope(**inputs, decoder_input_ids=ids).logits

    without_shift = brope_logits(2.0, 0.0) if zeroed == "gate" else brope_logits(0.0, 1.0)
    assert_close(without_shift, expected, atol=1e-6)
    assert (brope_logits(2.0, 1.0) - expected).abs().max() > 1e-3  # with a shift, bRoPE differs


# ------------------------------------------------------------------------------------------- betweenness


@pytest.mark.parametrize("causal", [False, True])
def test_betweenness_score_lies_in_unit_interval(causal):
    torch.manual_seed(0)
    z = torch.randn(2, 3, 20, 4)
    z[:, :, 5:9] = z[:, :, 5:6]  # repeated vectors: all three distances 0
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, 14:] = False
    for offset in (1, 2, 3):
        score = brope_asr.betweenness_score(z, offset, causal, valid)
        assert score.shape == (2, 3, 20)
        assert bool(((score >= 0) & (score <= 1)).all())


@pytest.mark.parametrize("offset", [1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_betweenness_score_is_one_on_a_straight_line_and_lower_on_a_zigzag(causal, offset):
    torch.manual_seed(0)
    length = 12
    steps = torch.arange(length, dtype=torch.float32)[:, None]
    line = torch.randn(4) + steps * torch.randn(4)  # equally spaced collinear points
    # Zigzag: k steps forward, then a jump of k up or down, so each triple (j - k, j, j + k) is an
    # isosceles triangle with |ac| = 2k and |ab| = |bc| = k sqrt 2: score 2k / (2 k sqrt 2) = 1 / sqrt 2.
    sign = torch.tensor([(-1.0) ** (j // offset) for j in range(length)])[:, None]
    zigzag = torch.cat((steps, offset * sign / 2), dim=1)
    first = 2 * offset if causal else offset  # the first position with a full triple
    last = length if causal else length - offset
    for z, interior in ((line, 1.0), (zigzag, 1 / math.sqrt(2))):
        score = brope_asr.betweenness_score(z[None, None], offset, causal)[0, 0]
        expected = torch.zeros(length)
        expected[first:last] = interior
        assert_close(score, expected, atol=1e-6)


def test_causal_betweenness_ignores_later_tokens():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 16, 4)
    for offset in (1, 2):
        for i in (4, 9):
            changed = z.clone()
            changed[:, :, i + 1 :] = torch.randn_like(changed[:, :, i + 1 :])
            before = brope_asr.betweenness_score(z, offset, causal=True)
            after = brope_asr.betweenness_score(changed, offset, causal=True)
            assert torch.equal(before[..., : i + 1], after[..., : i + 1])
            assert (before[..., i + 1 :] - after[..., i + 1 :]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_betweenness_score_ignores_padded_positions(causal):
    torch.manual_seed(0)
    z = torch.randn(2, 3, 15, 4)
    valid = torch.ones(2, 15, dtype=torch.bool)
    valid[1, 9:] = False
    z[1, :, 9:] = 1e4 * torch.randn(3, 6, 4)  # garbage where row 1 is padded
    score = brope_asr.betweenness_score(z, 2, causal, valid)
    alone = brope_asr.betweenness_score(z[1:, :, :9], 2, causal)
    assert_close(score[1, :, :9], alone[0], atol=1e-6)
    assert torch.equal(score[1, :, 9:], torch.zeros(3, 6))
    assert_close(score[0], brope_asr.betweenness_score(z[:1], 2, causal)[0], atol=0.0)


def test_betweenness_score_traces_into_one_graph_under_torch_compile():
    torch.manual_seed(0)
    z, valid = torch.randn(2, 1, 16, 8, requires_grad=True), torch.ones(2, 16, dtype=torch.bool)
    explanation = torch._dynamo.explain(brope_asr.betweenness_score)(z, 1, False, valid)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    compiled = torch.compile(brope_asr.betweenness_score, backend="aot_eager")
    grad = torch.autograd.grad(compiled(z, 1, False, valid).sum(), z)[0]
    assert_close(grad, torch.autograd.grad(brope_asr.betweenness_score(z, 1, False, valid).sum(), z)[0], atol=1e-6)


def test_betweenness_score_is_differentiable_even_for_equal_vectors():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 10, 4)
    z[:, :, 3:6] = 1.0  # three equal vectors: a 0/0 without the eps smoothing
    z.requires_grad_(True)
    score = brope_asr.betweenness_score(z, 1, causal=False)
    assert score.shape == (2, 3, 10)
    (score * torch.randn_like(score)).sum().backward()
    assert bool(torch.isfinite(z.grad).all()) and bool((z.grad != 0).any())


# --------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("masking", ["none", "key_padding", "causal", "causal_after_cache"])
@pytest.mark.parametrize("blended", [False, True])
def test_fused_attention_matches_reference(blended, masking):
    torch.manual_seed(0)
    batch, heads, queries, keys, width = 2, 3, 5, 9, 8
    if masking == "causal":
        queries = keys
    q = 2 * torch.randn(batch, heads, queries, width)
    k = 2 * torch.randn(batch, heads, keys, width)
    v = torch.randn(batch, heads, keys, width)
    blend = torch.rand(heads) if blended else None
    temperature = 1 + 19 * torch.rand(heads) if blended else None
    mask, is_causal = None, masking == "causal"
    if masking == "key_padding":
        mask = torch.ones(batch, 1, 1, keys, dtype=torch.bool)
        mask[1, ..., 6:] = False  # the second row has 3 padded keys
    if masking == "causal_after_cache":  # new queries after 4 cached keys, as a decoding step
        mask = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
    fused = brope_asr.attention(q, k, v, mask, is_causal, blend, temperature)
    reference = brope_asr.attention_reference(q, k, v, mask, is_causal, blend, temperature)
    assert_close(fused, reference, atol=1e-5)


@pytest.mark.parametrize("blended", [False, True])
def test_attention_dropout_drops_weights_and_keeps_the_expected_output(blended):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    blend, temperature = (torch.rand(2), 1 + 9 * torch.rand(2)) if blended else (None, None)
    kept = brope_asr.attention(q, k, v, blend=blend, temperature=temperature)
    dropped = torch.stack([brope_asr.attention(q, k, v, blend=blend, temperature=temperature, dropout=0.5) for _ in range(10000)])
    assert not torch.allclose(dropped[0], kept, atol=1e-3)
    assert_close(dropped.mean(0), kept, atol=0.05)  # kept weights scaled by 1 / (1 - p): unbiased


@pytest.mark.parametrize("form", ["blended_scores", "rescaled_product_scores", "summed_product_scores"])
@pytest.mark.parametrize("queries", [1, 5])
def test_blended_scores_in_every_form_are_the_dot_product_of_the_concatenated_query_and_key(form, queries):
    # The CPU writes the blend's scores out; other devices take the concatenated form onto a fused kernel.
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, queries, 8, dtype=torch.float64), torch.randn(2, 3, 7, 8, dtype=torch.float64)
    q[0, 0, -1] = 0.0  # a zero (padded) vector
    k[1, 2, 3] = 0.0
    blend, temperature = torch.rand(3, dtype=torch.float64), 1 + 19 * torch.rand(3, dtype=torch.float64)
    wide_q, wide_k = brope_asr.blended_query_key(q, k, blend, temperature)
    assert wide_q.shape == (2, 3, queries, 16) and wide_k.shape == (2, 3, 7, 16)
    scores = getattr(brope_asr, form)(q, k, blend, temperature)
    assert_close(scores, wide_q @ wide_k.transpose(-1, -2), atol=1e-12)


def saved_for_backward(scores, q, k, blend, temperature) -> int:
    """How many numbers autograd keeps for the backward of `scores(q, k, blend, temperature)`, each tensor once."""
    kept = {}

    def pack(tensor):
        kept[tensor.data_ptr(), tensor.numel()] = tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        scores(q, k, blend, temperature)
    return sum(kept.values())


@pytest.mark.parametrize("queries, keys, width, rescaled", [
    (1, 50, 8, True),  # one new token while decoding
    (8, 8, 8, True),
    (20, 75, 32, True),  # the small preset's cross-attention
    (150, 150, 128, True),  # the base preset's encoder on 3-s clips
    (40, 40, 8, False),
    (300, 300, 32, False),
])
def test_blended_scores_take_the_rescaled_form_only_where_it_keeps_less_for_backward(queries, keys, width, rescaled):
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, queries, width, requires_grad=True), torch.randn(1, 2, keys, width, requires_grad=True)
    blend, temperature = torch.rand(2, requires_grad=True), (1 + torch.rand(2)).requires_grad_()
    kept = {form: saved_for_backward(getattr(brope_asr, form), q, k, blend, temperature)
            for form in ("blended_scores", "rescaled_product_scores", "summed_product_scores")}
    cheaper, dearer = ("rescaled_product_scores", "summed_product_scores")[:: 1 if rescaled else -1]
    assert kept["blended_scores"] == kept[cheaper] < kept[dearer]


def test_blended_attention_is_finite_for_zero_vectors():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    q[:, :, 0] = 0.0
    k[:, :, 2:4] = 0.0
    blend, temperature = torch.tensor([0.3, 1.0]), torch.tensor([4.0, 100.0])
    fused = brope_asr.attention(q, k, v, blend=blend, temperature=temperature)
    assert bool(torch.isfinite(fused).all())
    assert_close(fused, brope_asr.attention_reference(q, k, v, blend=blend, temperature=temperature), atol=1e-5)


def test_blended_scores_have_rank_twice_the_head_width_so_no_narrower_dot_product_computes_them():
    # Why no single product narrower than 2 Dh gives the blend: it is a sum of two rank-Dh products, so
    # its score matrix has rank 2 Dh, and a dot product of width w has rank at most w. (`blended_scores`
    # rescales one Dh-wide product entry by entry, which is no product.)
    # The softmax ignores a constant added to a row, which can lower the rank by one at most.
    torch.manual_seed(0)
    width, length, b, tau = 8, 40, 0.4, 3.0
    q, k = torch.randn(length, width, dtype=torch.float64), torch.randn(length, width, dtype=torch.float64)
    plain = q @ k.T / math.sqrt(width)
    blended = b * tau * F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T + (1 - b) * plain
    assert torch.linalg.matrix_rank(plain) == width
    assert torch.linalg.matrix_rank(blended) == 2 * width
    assert torch.linalg.matrix_rank(blended - blended.mean(dim=1, keepdim=True)) >= 2 * width - 1


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_zeroes_p_of_the_elements_independently_and_scales_the_rest(p):
    torch.manual_seed(0)
    dropout = brope_asr.Dropout(p).train()
    x = torch.ones(1000, 1001, requires_grad=True)  # an element count no multiple of 4: the last draw is cut
    y = dropout(x)
    kept = y != 0
    n = kept.numel()
    assert abs((1 - kept.float().mean().item()) - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert ((y[kept] * (1 - p) - 1).abs() < 1e-4).all()
    # Neighbours (the four words of one draw, and across draws) are independent: no correlation.
    flat = kept.flatten().float()
    for lag in (1, 2, 3, 4):
        assert abs(torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y / d x is the mask times the scale
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # torch's seeded generator, as nn.Dropout
    assert torch.equal(dropout.eval()(x), x) and torch.equal(brope_asr.Dropout(0.0).train()(x), x)


# ----------------------------------------------------------------------------------------- learned mixes


MIX_NAMES = ("blend_logit", "log_temperature", "gate", "input_blend_logit")


def model_with_mixes_at(value: float) -> BRoPEASRForConditionalGeneration:
    """A tiny model with every learned mix on and every mix parameter filled with `value`.

    0.0 is the centre of every logit's range but the lower clamp bound of log_temperature (tau = 1),
    a kink where torch >= 2.14 gives clamp the minimum-norm subgradient 0 (torch 2.13 gave 1): there
    the temperature takes the middle of [0, log max] instead, its unsaturated point.
    """
    torch.manual_seed(0)
    model = tiny_model(**ALL_FEATURES).train()
    middle = 0.5 * math.log(model.config.attention_max_temperature)
    mixes = [(name.rsplit(".", 1)[-1], p) for name, p in model.named_parameters() if name.rsplit(".", 1)[-1] in MIX_NAMES]
    assert len(mixes) == 3 * 2 + 2 + 1  # blend and temperature of 3 attentions, 2 gates, 1 input blend
    with torch.no_grad():
        for name, parameter in mixes:
            parameter.fill_(middle if value == 0.0 and name == "log_temperature" else value)
    return model


@pytest.mark.parametrize("value", [-1e4, 0.0, 1e4])
def test_attention_blend_stays_in_the_unit_interval_and_temperature_within_its_clamp(value):
    model = model_with_mixes_at(value)
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attentions) == 3
    for attention in attentions:
        blend, temperature = attention.blend_and_temperature()
        assert bool(((blend >= 0) & (blend <= 1)).all())
        assert bool(((temperature >= 1) & (temperature <= model.config.attention_max_temperature)).all())


@pytest.mark.parametrize("value", [-1e4, 0.0, 1e4])
def test_input_blend_stays_in_the_unit_interval(value):
    assert 0 <= model_with_mixes_at(value).encoder.input_blend().item() <= 1


@pytest.mark.parametrize("value", [-1e4, 0.0, 1e4])
def test_betweenness_shift_stays_within_its_max_shift(value):
    model = model_with_mixes_at(value)
    values = torch.randn(2, 2, 12, 16)
    shifts = [module(values, causal=False, valid=None) for module in model.modules() if isinstance(module, BetweennessShift)]
    assert len(shifts) == 2
    assert all(bool((shift.abs() <= model.config.betweenness_max_shift).all()) for shift in shifts)


@pytest.mark.parametrize("value", [-1e4, 0.0, 1e4])
def test_learned_mixes_reports_each_kind_of_mix_as_a_finite_number(value):
    learned = model_with_mixes_at(value).learned_mixes()
    assert set(learned) == {"input_blend", "attention_blend", "betweenness_gate"}
    assert all(math.isfinite(v) for v in learned.values())


@pytest.mark.parametrize("value", [-1e4, 0.0, 1e4])
def test_loss_and_every_gradient_stay_finite_at_extreme_mixes(value):
    model = model_with_mixes_at(value)
    loss = model(**audio_inputs(model.config, 3000, 2000), labels=decoder_ids(2, 6)).loss
    assert torch.isfinite(loss)
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and bool(torch.isfinite(parameter.grad).all()), name


def test_every_learned_mix_gets_a_gradient_at_its_unsaturated_point():
    model = model_with_mixes_at(0.0)
    model(**audio_inputs(model.config, 3000, 2000), labels=decoder_ids(2, 6)).loss.backward()
    for name, parameter in model.named_parameters():
        if name.rsplit(".", 1)[-1] in MIX_NAMES:
            assert bool((parameter.grad != 0).any()), name


# ------------------------------------------------------------------------------------- signal processing


def real_clip() -> np.ndarray:
    samples, sampling_rate = soundfile.read(DATA / "train" / "000000.mp3", dtype="float32")  # MP3: decoded by libsndfile
    assert sampling_rate == SAMPLE_RATE
    return samples


@pytest.mark.parametrize("clip", ["noise_400", "noise_1234", "noise_16037", "real"])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(n_mels, clip):
    rng = np.random.default_rng(0)
    audio = real_clip() if clip == "real" else (0.1 * rng.standard_normal(int(clip.split("_")[1]))).astype(np.float32)
    extractor = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    expected = extractor(audio, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="np").input_features[0]
    ours = brope_asr.log_mel_spectrogram(torch.from_numpy(audio), n_mels=n_mels)
    assert ours.shape == (n_mels, len(audio) // 160) == expected.shape
    assert_close(ours, torch.from_numpy(expected), atol=1e-4)
    # transformers' numpy path: a separate STFT and filterbank implementation.
    numpy_reference = extractor._np_extract_fbank_features(audio[None].astype(np.float64), "cpu")[0]
    assert_close(ours, torch.from_numpy(numpy_reference).float(), atol=1e-4)


def test_batched_log_mel_equals_each_clip_alone():
    torch.manual_seed(0)
    # The middle clip is a quiet tone with a loud first sample: mel bins far from 1 kHz sit at the
    # 80 dB floor below the clip's peak, so any frame of padding counted in the peak would move it.
    click_tone = 0.1 * sine(1000.0, SAMPLE_RATE, 1234).float()
    click_tone[0] = 1.0
    clips = [0.1 * torch.randn(400), click_tone, 0.1 * torch.randn(5000)]
    batch = 1e3 * torch.randn(3, 5000)  # garbage after each clip: it must not leak into the features
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = clip
    lengths = torch.tensor([len(clip) for clip in clips])
    features = brope_asr.log_mel_spectrogram(batch, n_mels=80, lengths=lengths)
    assert features.shape == (3, 80, 5000 // 160)
    for row, clip in enumerate(clips):
        frames = len(clip) // 160
        assert_close(features[row, :, :frames], brope_asr.log_mel_spectrogram(clip, n_mels=80), atol=1e-5)
        assert torch.equal(features[row, :, frames:], torch.zeros(80, 5000 // 160 - frames))


def test_log_mel_rejects_unusable_audio():
    with pytest.raises(ValueError, match="16000"):
        brope_asr.log_mel_spectrogram(torch.zeros(1000), sampling_rate=8000)
    with pytest.raises(TypeError, match="float"):
        brope_asr.log_mel_spectrogram(torch.zeros(1000, dtype=torch.int16))
    with pytest.raises(ValueError, match="400"):
        brope_asr.log_mel_spectrogram(torch.zeros(399))


@pytest.mark.parametrize("tone", ["1 kHz", "0.6 Nyquist"])
@pytest.mark.parametrize("sampling_rate", [8000, 22050, 44100, 48000])
def test_resample_reproduces_a_sine_at_16khz(sampling_rate, tone):
    # 0.6 of the lower Nyquist frequency (4.8 kHz, or 2.4 kHz from 8 kHz) lies inside the kernel's
    # transition band but must still pass nearly whole: a cutoff set too low would remove it.
    frequency = 1000.0 if tone == "1 kHz" else 0.3 * min(sampling_rate, SAMPLE_RATE)
    length = sampling_rate // 2 + 7
    resampled = brope_asr.resample(sine(frequency, sampling_rate, length), sampling_rate)
    assert resampled.dtype == torch.float32
    assert resampled.shape == (math.ceil(length * SAMPLE_RATE / sampling_rate),)
    expected = sine(frequency, SAMPLE_RATE, len(resampled)).float()
    edge = 200  # the kernel sees zero padding within ~6 periods of the lower rate of each end
    assert_close(resampled[edge:-edge], expected[edge:-edge], atol=2e-3 if tone == "1 kHz" else 1e-2)


def test_resample_removes_tones_above_the_new_nyquist():
    # 12 kHz lies above 16 kHz's Nyquist frequency (8 kHz); taking every third sample without a
    # low-pass filter would fold it onto a full-amplitude 4 kHz tone.
    tone = sine(12000.0, 48000, 24000)
    assert tone[::3].abs().max() > 0.8
    resampled = brope_asr.resample(tone, 48000)
    assert resampled[200:-200].abs().max() < 1e-2


@pytest.mark.parametrize("length", [1, 399, 12345])
@pytest.mark.parametrize("sampling_rate", [8000, 16000, 22050, 44100, 48000])
def test_resample_output_length_is_ceil_of_the_rate_ratio(sampling_rate, length):
    resampled = brope_asr.resample(torch.randn(3, 2, length), sampling_rate)
    assert resampled.shape == (3, 2, math.ceil(length * SAMPLE_RATE / sampling_rate))


@pytest.mark.parametrize("sampling_rate", [8000, 44100])
def test_resample_of_empty_audio_is_empty(sampling_rate):
    assert brope_asr.resample(torch.zeros(0), sampling_rate).shape == (0,)


# ------------------------------------------------------------------------------------------------- audio


def test_load_audio_averages_channels_to_mono(tmp_path):
    torch.manual_seed(0)
    stereo = 0.1 * torch.randn(4000, 2)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo.numpy(), SAMPLE_RATE, subtype="FLOAT")
    assert_close(brope_asr.load_audio(str(path)), stereo.mean(dim=1), atol=1e-7)


@pytest.mark.parametrize(
    "name, subtype, tolerance",
    [
        ("int16.wav", "PCM_16", 1 / 32768),
        ("int16.flac", "PCM_16", 1 / 32768),
        ("float32.wav", "FLOAT", 1e-7),
        ("float64.wav", "DOUBLE", 1e-7),
    ],
)
def test_load_audio_reads_integer_and_float_files(tmp_path, name, subtype, tolerance):
    torch.manual_seed(0)
    clip = 0.3 * torch.randn(8000).clamp(-3, 3).double()
    path = tmp_path / name
    soundfile.write(path, clip.numpy(), SAMPLE_RATE, subtype=subtype)
    loaded = brope_asr.load_audio(str(path))
    assert loaded.dtype == torch.float32
    assert_close(loaded.double(), clip, atol=tolerance)


def test_load_audio_resamples_to_16khz(tmp_path):
    clip = 0.5 * sine(1000.0, 44100, 44100)
    path = tmp_path / "cd.wav"
    soundfile.write(path, clip.numpy(), 44100, subtype="FLOAT")
    loaded = brope_asr.load_audio(str(path))
    assert loaded.shape == (16000,)
    assert_close(loaded, brope_asr.resample(clip.float(), 44100), atol=1e-6)
    assert_close(loaded[200:-200], 0.5 * sine(1000.0, SAMPLE_RATE, 16000)[200:-200].float(), atol=2e-3)


@pytest.mark.parametrize(
    "case", ["missing", "junk_bytes", "zero_bytes", "no_samples_16khz", "no_samples_44khz", "too_short", "nan"]
)
def test_load_audio_errors_name_the_file(tmp_path, case):
    path = tmp_path / f"{case}.wav"
    if case == "junk_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    if case == "zero_bytes":
        path.write_bytes(b"")
    if case.startswith("no_samples"):  # a valid header with no frames
        soundfile.write(path, np.zeros(0, np.float32), 44100 if case.endswith("44khz") else SAMPLE_RATE)
    if case == "too_short":
        soundfile.write(path, np.zeros(300, np.float32), SAMPLE_RATE, subtype="FLOAT")
    if case == "nan":
        samples = np.zeros(8000, np.float32)
        samples[1234] = np.nan
        soundfile.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(ValueError) as error:
        brope_asr.load_audio(str(path))
    assert str(path) in str(error.value)


def test_mel_bins_below_counts_the_filters_centred_below_the_cutoff():
    centers = brope_asr.mel_centers(80)
    assert bool((centers.diff() > 0).all())
    kept = brope_asr.mel_bins_below(80, 4000.0)
    assert centers[kept - 1] < 4000.0 <= centers[kept]
    assert brope_asr.mel_bins_below(80, None) == 80 and brope_asr.mel_bins_below(80, 8000.0) == 80


def test_spectrogram_front_end_ignores_every_bin_above_its_cutoff():
    torch.manual_seed(0)
    model = tiny_model(spectrogram_max_hz=4000.0, normalize_features=True).eval()
    kept = brope_asr.mel_bins_below(model.config.num_mel_bins, 4000.0)
    assert model.encoder.spectrogram.conv_in.in_channels == kept < model.config.num_mel_bins
    inputs = audio_inputs(model.config, 4000, 3000)
    changed = inputs["input_features"].clone()
    changed[:, kept:] = 5 * torch.randn_like(changed[:, kept:])  # anything at all above the cutoff
    with torch.no_grad():
        reference = model.encoder(**inputs).last_hidden_state
        assert_close(model.encoder(**{**inputs, "input_features": changed}).last_hidden_state, reference, atol=0.0)
        changed[:, kept - 1] += 1.0  # the highest kept bin does count
        assert not torch.allclose(model.encoder(**{**inputs, "input_features": changed}).last_hidden_state, reference)


def test_a_band_limited_model_loads_with_from_pretrained_before_any_bin_count_is_cached(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(spectrogram_max_hz=4000.0)
    model.save_pretrained(tmp_path)
    brope_asr.mel_centers.cache_clear()  # as in a fresh process: from_pretrained builds on the meta device
    loaded = BRoPEASRForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.encoder.spectrogram.bins == model.encoder.spectrogram.bins == brope_asr.mel_bins_below(80, 4000.0)
    inputs = audio_inputs(model.config, 4000)
    with torch.no_grad():
        assert torch.equal(loaded.encoder(**inputs).last_hidden_state, model.encoder(**inputs).last_hidden_state)


@pytest.mark.parametrize("max_hz", [0.0, -1.0, 8001.0])
def test_config_refuses_a_spectrogram_cutoff_outside_the_band(max_hz):
    with pytest.raises(ValueError, match="spectrogram_max_hz"):
        BRoPEASRConfig(spectrogram_max_hz=max_hz)


@pytest.mark.parametrize("length", [1, 6, 7])
@pytest.mark.parametrize("layout", [
    dict(in_channels=5, out_channels=8, kernel_size=3, padding=1),  # the spectrogram's first convolution
    dict(in_channels=8, out_channels=8, kernel_size=3, padding=2, dilation=2, groups=8),  # its depthwise one
    dict(in_channels=8, out_channels=6, kernel_size=1),  # pointwise
    dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, padding=1),  # downsampling
])
def test_conv_frames_equals_the_convolution_in_value_and_gradient(layout, length):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(**layout).double()
    x = torch.randn(2, length, layout["in_channels"], dtype=torch.float64, requires_grad=True)
    reference = conv(x.transpose(1, 2)).transpose(1, 2)
    ours = brope_asr.conv_frames(x, conv)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference)
    weights = torch.randn_like(reference)
    expected = torch.autograd.grad((reference * weights).sum(), [x, conv.weight, conv.bias])
    got = torch.autograd.grad((ours * weights).sum(), [x, conv.weight, conv.bias])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_conv_frames_refuses_grouped_convolutions_that_are_not_depthwise():
    with pytest.raises(ValueError, match="groups=2"):
        brope_asr.conv_frames(torch.zeros(1, 4, 8), torch.nn.Conv1d(8, 8, 3, groups=2))


# ------------------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("downsampling_factor", [1, 2, 4])
@pytest.mark.parametrize("input_mode", INPUT_MODES)
def test_output_shapes_follow_input_mode_and_downsampling(input_mode, downsampling_factor):
    torch.manual_seed(0)
    model = tiny_model(input_mode=input_mode, downsampling_factor=downsampling_factor)
    inputs = audio_inputs(model.config, 7 * 160 + 50, 5 * 160)  # T = 7 frames: odd, so ceil matters
    assert set(inputs) == {"attention_mask"} | {
        "spectrogram": {"input_features"},
        "waveform": {"waveform"},
        "both": {"input_features", "waveform"},
    }[input_mode]
    output = model(**inputs, decoder_input_ids=decoder_ids(2, 5))
    assert output.logits.shape == (2, 5, VOCAB)
    frames = math.ceil(7 / downsampling_factor)
    assert output.encoder_last_hidden_state.shape == (2, frames, 32)
    assert model.encoder(**inputs).last_hidden_state.shape == (2, frames, 32)


# -------------------------------------------------------------------------------------- model invariants


def test_input_blend_extremes_select_one_front_end():
    torch.manual_seed(0)
    model = move_off_init(tiny_model(input_mode="both"))
    inputs, other = audio_inputs(model.config, 3000, 2200), audio_inputs(model.config, 3000, 2200)
    ids = decoder_ids(2, 6)
    # b = sigmoid(logit) is the spectrogram's share: at b = 1 the waveform is ignored, at b = 0 the features.
    for logit, ignored in ((1e4, "waveform"), (-1e4, "input_features")):
        with torch.no_grad():
            model.encoder.input_blend_logit.fill_(logit)
        logits = model(**inputs, decoder_input_ids=ids).logits
        assert_close(model(**{**inputs, ignored: other[ignored]}, decoder_input_ids=ids).logits, logits, atol=1e-6)
        kept = "input_features" if ignored == "waveform" else "waveform"
        assert (model(**{**inputs, kept: other[kept]}, decoder_input_ids=ids).logits - logits).abs().max() > 1e-3


def test_attention_blend_at_zero_equals_plain_attention():
    torch.manual_seed(0)
    plain = move_off_init(tiny_model(use_betweenness=True))
    blended = tiny_model(use_betweenness=True, blend_attention=True)
    missing, unexpected = blended.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and {name.rsplit(".", 1)[1] for name in missing} == {"blend_logit", "log_temperature"}
    inputs, ids = audio_inputs(plain.config, 3000, 2200), decoder_ids(2, 8)
    expected = plain(**inputs, decoder_input_ids=ids).logits
    with torch.no_grad():
        for module in blended.modules():
            if isinstance(module, Attention):
                module.blend_logit.fill_(-1e4)  # b = 0: scaled dot product only
    assert_close(blended(**inputs, decoder_input_ids=ids).logits, expected, atol=1e-5)
    with torch.no_grad():
        for module in blended.modules():
            if isinstance(module, Attention):
                module.blend_logit.fill_(0.0)
    assert (blended(**inputs, decoder_input_ids=ids).logits - expected).abs().max() > 1e-3


@pytest.mark.parametrize("blend_attention", [False, True])
@pytest.mark.parametrize("use_betweenness", [False, True])
@pytest.mark.parametrize("input_mode", INPUT_MODES)
def test_decoder_logits_ignore_future_tokens(input_mode, use_betweenness, blend_attention):
    torch.manual_seed(0)
    model = move_off_init(
        tiny_model(input_mode=input_mode, use_betweenness=use_betweenness, blend_attention=blend_attention)
    )
    inputs = audio_inputs(model.config, 3000, 2200)
    ids = decoder_ids(2, 10)
    t = 4
    changed = ids.clone()
    changed[:, t + 1] = 3 + (ids[:, t + 1] - 3 + 1) % (VOCAB - 3)  # another ordinary token
    logits = model(**inputs, decoder_input_ids=ids).logits
    changed_logits = model(**inputs, decoder_input_ids=changed).logits
    assert_close(changed_logits[:, : t + 1], logits[:, : t + 1], atol=1e-5)
    assert (changed_logits[:, t + 1 :] - logits[:, t + 1 :]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize("input_mode", INPUT_MODES)
def test_logits_change_when_audio_changes(input_mode):
    torch.manual_seed(0)
    model = move_off_init(tiny_model(input_mode=input_mode, use_betweenness=True))
    inputs = audio_inputs(model.config, 3000, 3000)
    other = audio_inputs(model.config, 3000, 3000)
    ids = decoder_ids(2, 6)
    logits = model(**inputs, decoder_input_ids=ids).logits
    for name in ("input_features", "waveform"):  # in "both" mode each branch on its own must matter
        if name in inputs:
            changed = model(**{**inputs, name: other[name]}, decoder_input_ids=ids).logits
            assert (changed - logits).abs().amax(dim=(1, 2)).min() > 1e-3, name


@pytest.mark.parametrize("downsampling_factor", [1, 2, 4])
@pytest.mark.parametrize("input_mode", INPUT_MODES)
def test_clip_outputs_do_not_depend_on_batch_padding(input_mode, downsampling_factor):
    torch.manual_seed(0)
    model = move_off_init(
        tiny_model(input_mode=input_mode, downsampling_factor=downsampling_factor, use_betweenness=True,
                   blend_attention=True, normalize_features=True, normalize_feature_variance=True,  # the clip statistics must not see padding either
                   spectrogram_floor_db=50.0,  # nor its loudest cell
                   absolute_encoder_positions=True)
    )
    short, long = random_clips(9 * 160 + 37, 20 * 160)  # 9 frames: odd, the downsampling edge case
    ids = decoder_ids(1, 7)
    alone = model(**brope_asr.batch_inputs([short], model.config), decoder_input_ids=ids)

    batched_inputs = brope_asr.batch_inputs([short, long], model.config)
    assert batched_inputs["attention_mask"].sum(1).tolist() == [9, 20]
    if "input_features" in batched_inputs:
        batched_inputs["input_features"][0, :, 9:] = 1e3 * torch.randn(model.config.num_mel_bins, 11)
    if "waveform" in batched_inputs:
        batched_inputs["waveform"][0, 9 * 160 :] = 1e3 * torch.randn(11 * 160)
    batched = model(**batched_inputs, decoder_input_ids=ids.expand(2, -1))

    frames = alone.encoder_last_hidden_state.shape[1]
    assert frames == {1: 9, 2: 5, 4: 3}[downsampling_factor]
    assert int(model.encoder.output_valid(batched_inputs["attention_mask"])[0].sum()) == frames
    # 1e-4: batching changes float32 summation order (up to 1e-5 seen); a leak of padding moves 1e-2 and more.
    assert_close(batched.encoder_last_hidden_state[:1, :frames], alone.encoder_last_hidden_state, atol=1e-4)
    assert_close(batched.logits[:1], alone.logits, atol=1e-4)


def test_absolute_encoder_positions_are_whispers_sinusoids_added_to_every_frame():
    whisper = transformers.WhisperForConditionalGeneration(
        transformers.WhisperConfig(d_model=64, max_source_positions=50, encoder_layers=1, decoder_layers=1,
                                   encoder_attention_heads=2, decoder_attention_heads=2, vocab_size=100, pad_token_id=0,
                                   bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    )
    assert_close(brope_asr.sinusoids(50, 64), whisper.model.encoder.embed_positions.weight.detach(), atol=1e-6)
    torch.manual_seed(0)
    model = move_off_init(tiny_model()).eval()
    inputs = audio_inputs(model.config, 16000)
    states = {}
    for on in (False, True):
        model.config.absolute_encoder_positions = on
        states[on] = model.get_encoder()(**inputs).last_hidden_state
    assert (states[True] - states[False]).abs().amax(-1).min() > 1e-2  # every frame moved by its position


def test_feature_normalization_makes_outputs_independent_of_gain():
    torch.manual_seed(0)
    clip = random_clips(3000)[0]
    ids = decoder_ids(1, 7)
    for normalize in (True, False):
        model = move_off_init(tiny_model(normalize_features=normalize))
        quiet, loud = (model(**brope_asr.batch_inputs([gain * clip], model.config), decoder_input_ids=ids).logits
                       for gain in (1.0, 3.7))  # x3.7 adds 11.4 dB: log-mel moves by one constant
        if normalize:
            assert_close(loud, quiet, atol=1e-4)
        else:
            assert (loud - quiet).abs().max() > 1e-2


def test_spectrogram_floor_makes_outputs_independent_of_what_lies_below_it():
    torch.manual_seed(0)
    model = move_off_init(tiny_model(normalize_features=True, spectrogram_floor_db=50.0))
    features = torch.rand(1, model.config.num_mel_bins, 30) * 2.5 - 1.5  # cells spread over 100 dB
    floor = features.max() - 50.0 / 40.0  # 50 dB under the clip's loudest cell, 40 dB per log-mel unit
    quiet = features < floor
    assert 0.2 < quiet.float().mean() < 0.8
    ids = decoder_ids(1, 7)
    logits = model(input_features=features, decoder_input_ids=ids).logits
    other = torch.where(quiet, features - 2.0 * torch.rand_like(features), features)  # deeper silence, another pattern
    assert_close(model(input_features=other, decoder_input_ids=ids).logits, logits, atol=1e-5)
    louder = torch.where(quiet, floor + 5.0 / 40.0, features)  # 5 dB above the floor: heard
    assert (model(input_features=louder, decoder_input_ids=ids).logits - logits).abs().max() > 1e-2
    with pytest.raises(ValueError, match="spectrogram_floor_db"):
        tiny_config(spectrogram_floor_db=0.0)


def test_feature_variance_normalization_makes_outputs_independent_of_dynamic_range():
    torch.manual_seed(0)
    model = move_off_init(tiny_model(normalize_features=True, normalize_feature_variance=True))
    features = torch.randn(1, model.config.num_mel_bins, 30)  # each bin's std about 1, far above the 0.05 floor
    ids = decoder_ids(1, 7)
    logits = {scale: model(input_features=scale * features + 0.3, decoder_input_ids=ids).logits
              for scale in (1.0, 3.0)}  # 3.0: every bin's range tripled, as on a quieter channel's floor
    # Not exact: the floor adds 0.0025 to variances of 1 and 9 (a 0.1% scale error); a missed division moves them by 1 and more.
    assert_close(logits[3.0], logits[1.0], atol=1e-2)
    plain = move_off_init(tiny_model(normalize_features=True))
    moved = [plain(input_features=scale * features, decoder_input_ids=ids).logits for scale in (1.0, 3.0)]
    assert (moved[0] - moved[1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="needs normalize_features"):
        tiny_config(normalize_features=False, normalize_feature_variance=True)


# -------------------------------------------------------------------------------------- CTC and building


@pytest.mark.parametrize("input_mode", ["spectrogram", "waveform"])
def test_loss_is_cross_entropy_plus_weighted_ctc(input_mode):
    torch.manual_seed(0)
    weight = 0.3
    model = move_off_init(tiny_model(input_mode=input_mode, ctc_weight=weight, use_betweenness=True))
    inputs = audio_inputs(model.config, 4000, 2500)  # 25 and 15 frames -> 13 and 8 encoder frames
    labels = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, -100, -100]])
    output = model(**inputs, labels=labels)

    # Independent reference: token cross-entropy over non-ignored labels, plus CTC of each clip's
    # real encoder frames against its transcript without eos, summed over clips and divided by the
    # same 8 label tokens as the cross-entropy.
    cross_entropy = F.cross_entropy(output.logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    log_probs = model.ctc_head(output.encoder_last_hidden_state).log_softmax(-1)
    ctc = [
        F.ctc_loss(log_probs[b, :frames, None], torch.tensor([target]), [frames], [len(target)], blank=0, reduction="sum")
        for b, frames, target in ((0, 13, [5, 6, 7, 8]), (1, 8, [9, 10]))
    ]
    assert_close(output.loss, cross_entropy + weight * torch.stack(ctc).sum() / 8, atol=1e-5)

    # The same identity through the model's own pieces: the loss of the same weights without CTC,
    # plus weight x ctc_loss.
    without_ctc = tiny_model(input_mode=input_mode, use_betweenness=True)
    missing, unexpected = without_ctc.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(name.startswith("ctc_head.") for name in unexpected)
    valid = model.encoder.output_valid(inputs["attention_mask"])
    ctc_loss = model.ctc_loss(output.encoder_last_hidden_state, valid, labels)
    assert_close(output.loss, without_ctc(**inputs, labels=labels).loss + weight * ctc_loss, atol=1e-5)


def test_ctc_with_k_outputs_per_frame_reads_each_frames_k_symbols_in_order_and_aligns_k_times_more():
    torch.manual_seed(0)
    model = move_off_init(tiny_model(ctc_weight=0.3, ctc_outputs_per_frame=2))
    inputs = audio_inputs(model.config, 4000, 2500)  # 13 and 8 encoder frames: 26 and 16 CTC steps
    audio = model.encoder(**inputs)[0]  # (2, 13, D)
    valid = model.encoder.output_valid(inputs["attention_mask"])
    # Clip 0: 20 symbols, 6 repeated pairs: 26 steps, as many as two per frame give and twice what one gives.
    # Clip 1: 12 symbols: more than its 8 frames, within its 16 steps.
    long_0 = [5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 12, 13, 14, 15, 3, 4, 5]
    long_1 = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    labels = torch.tensor([long_0 + [2], long_1 + [2] + [-100] * 8])
    got = model.ctc_negative_log_likelihood(audio, valid, labels, zero_infinity=False)

    # Independent reference: frame t's head output split into its two symbols' logits, read as steps 2t, 2t + 1.
    logits = model.ctc_head(audio)  # (B, T', 2 V)
    steps = torch.stack([logits[..., :VOCAB], logits[..., VOCAB:]], dim=2).reshape(2, -1, VOCAB).log_softmax(-1)
    expected = [
        F.ctc_loss(steps[b, : 2 * frames, None], torch.tensor([target]), [2 * frames], [len(target)], blank=0, reduction="sum")
        for b, frames, target in ((0, 13, long_0), (1, 8, long_1))
    ]
    assert_close(got, torch.stack(expected), atol=1e-4)
    assert torch.isfinite(got).all()

    # One symbol per frame cannot align either transcript; one symbol more than 2 T' steps cannot either.
    one = tiny_model(ctc_weight=0.3)
    assert torch.isinf(one.ctc_negative_log_likelihood(audio, valid, labels, zero_infinity=False)).all()
    too_long = torch.tensor([long_0 + [5, 2], long_1 + [15] * 5 + [2] + [-100] * 4])
    assert torch.isinf(model.ctc_negative_log_likelihood(audio, valid, too_long, zero_infinity=False)).all()


def test_label_smoothing_mixes_the_uniform_target_into_training_loss_only():
    torch.manual_seed(0)
    smoothing = 0.2
    model = move_off_init(tiny_model(label_smoothing=smoothing, dropout=0.0))
    inputs = audio_inputs(model.config, 4000, 2500)
    labels = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, -100, -100]])
    evaluated = model.eval()(**inputs, labels=labels)
    trained = model.train()(**inputs, labels=labels)
    # Independent reference over the 8 real tokens: (1 - e) x their negative log-likelihood + e x the
    # mean over the vocabulary of -log p (the cross-entropy with the uniform distribution).
    log_probs = evaluated.logits.log_softmax(-1)[labels != -100]
    targets = labels[labels != -100]
    nll = -log_probs.gather(-1, targets[:, None]).mean()
    assert_close(evaluated.loss, nll, atol=1e-5)  # evaluation: plain cross-entropy, comparable across runs
    assert_close(trained.logits, evaluated.logits, atol=1e-5)
    assert_close(trained.loss, (1 - smoothing) * nll + smoothing * -log_probs.mean(), atol=1e-5)


@pytest.mark.parametrize(
    "disabled, absent",
    [
        pytest.param(dict(ctc_weight=0.0), ("ctc_head.",), id="ctc"),
        pytest.param(dict(input_mode="spectrogram"), ("encoder.waveform", "input_blend_logit"), id="waveform"),
        pytest.param(dict(input_mode="waveform"), ("encoder.spectrogram", "input_blend_logit"), id="spectrogram"),
        pytest.param(dict(blend_attention=False), (".blend_logit", ".log_temperature"), id="blend_attention"),
        pytest.param(dict(use_betweenness=False), (".betweenness.",), id="betweenness"),
        pytest.param(dict(learned_rope_frequencies=False), ("log_inv_freq",), id="learned_rope_frequencies"),
        pytest.param(dict(downsampling_factor=1), ("encoder.downsample.",), id="downsampling"),
    ],
)
def test_disabled_features_build_no_parameters(disabled, absent):
    enabled_names = [name for name, _ in tiny_model(**ALL_FEATURES).named_parameters()]
    names = [name for name, _ in tiny_model(**{**ALL_FEATURES, **disabled}).named_parameters()]
    for part in absent:
        assert any(part in name for name in enabled_names)
        assert not any(part in name for name in names), part
    assert set(names) < set(enabled_names)


@pytest.mark.parametrize("input_mode", INPUT_MODES)
def test_every_parameter_receives_gradient(input_mode):
    # An unused parameter breaks DistributedDataParallel; a dead branch would show here as no gradient.
    torch.manual_seed(0)
    model = move_off_init(tiny_model(**{**ALL_FEATURES, "input_mode": input_mode})).train()
    inputs = audio_inputs(model.config, 3000, 2200)
    model(**inputs, labels=decoder_ids(2, 6)).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and bool((parameter.grad != 0).any()), name


def test_bf16_autocast_on_cpu_gives_the_float32_loss_and_gradients_to_bf16_precision():
    # `train_hf.py --bf16` on a CPU (README, Training options): every custom op (the rotation, the
    # betweenness score, the blend, both front ends, CTC) must run under autocast and keep its meaning.
    torch.manual_seed(0)
    model = move_off_init(tiny_model(**ALL_FEATURES, spectrogram_floor_db=60.0)).train()
    inputs = {**audio_inputs(model.config, 3000, 2200), "labels": decoder_ids(2, 6)}
    losses, gradients = [], []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        losses.append(loss.item())
        gradients.append({name: parameter.grad.flatten() for name, parameter in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    for name, exact in gradients[0].items():  # measured on one thread, as here: every cosine >= 0.998
        assert F.cosine_similarity(gradients[1][name], exact, dim=0) > 0.95, name


def test_rotation_under_bf16_autocast_keeps_float32_angles_far_into_a_sequence():
    # At position 900 bf16 steps by 4 positions, radians apart at the highest frequency: bRoPE's positions
    # (index plus a shift computed in bf16) must stay float32. Measured: 0.04 at most here; with the
    # positions rounded to bf16, 6.3.
    torch.manual_seed(0)
    attention = move_off_init(tiny_model(**ALL_FEATURES)).encoder.layers[0].self_attn
    q, k, v = (torch.randn(1, 2, 1000, 16) for _ in range(3))
    exact = attention._rotate(q, k, v, None, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rotated = attention._rotate(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, None)
    for low, high in zip(rotated, exact):
        assert low.dtype == torch.bfloat16
        assert_close(low.float(), high, atol=0.1)


def test_initialization_report_counts_modules_by_rule(capsys):
    torch.manual_seed(0)
    model = tiny_model(**ALL_FEATURES)
    report = model.initialization_report()
    printed = capsys.readouterr().out
    # Hand count for one encoder and one decoder layer with every feature on:
    # SelfAttention: the encoder's and the decoder's, each with bRoPE; CrossAttention: the decoder's.
    # Linear: 4 per attention, 2 betweenness projections, 2 per feed-forward, squeeze and excite, CTC head.
    # Conv1d: 3 in the spectrogram front end, 4 in the waveform front end, the downsampling.
    # LayerNorm: 2 front-end norms, 2 + final in the encoder, 3 + final in the decoder.
    assert report["modules"] == {
        "BetweennessShift": 2,
        "Conv1d": 8,
        "CrossAttention": 1,
        "Embedding": 1,
        "Encoder": 1,
        "LayerNorm": 9,
        "Linear": 4 * 3 + 2 + 2 * 2 + 2 + 1,
        "SelfAttention": 2,
    }
    owners = {type(m).__name__ for m in model.modules() if any(True for _ in m.parameters(recurse=False))}
    assert owners <= set(brope_asr.INIT_RULES), owners - set(brope_asr.INIT_RULES)
    total = sum(p.numel() for p in model.parameters())
    assert report["total_parameters"] == report["trainable_parameters"] == total
    lines = printed.splitlines()
    for name, count in report["modules"].items():  # one line per type: name, count and rule
        assert any(line.split()[:2] == [name, str(count)] and brope_asr.INIT_RULES[name] in line for line in lines)
    assert f"{total:,}" in printed


def test_initialization_starts_at_the_plain_baseline():
    torch.manual_seed(0)
    model = tiny_model(**{**ALL_FEATURES, "init_std": 0.02})
    head_dim = 32 // 2
    for module in model.modules():
        if isinstance(module, Attention):
            blend, temperature = module.blend_and_temperature()
            assert_close(blend, torch.full((2,), 0.5), atol=1e-7)
            assert_close(temperature, torch.full((2,), math.sqrt(head_dim)), atol=1e-5)
            if isinstance(module, SelfAttention) and module.log_inv_freq is not None:
                assert_close(module.inv_freq(None), brope_asr.rope_frequencies(head_dim, 10000.0), atol=1e-7)
        if isinstance(module, BetweennessShift):
            assert not module.gate.any()
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones(32)) and torch.equal(module.bias, torch.zeros(32))
        if isinstance(module, torch.nn.Linear):
            assert module.weight.abs().max() <= 2 * 0.02 and (module.bias is None or not module.bias.any())
    assert model.encoder.input_blend().item() == 0.5


def test_residual_output_layers_start_smaller_by_depth_whatever_the_visiting_order():
    torch.manual_seed(0)
    config = BRoPEASRConfig(d_model=256, encoder_ffn_dim=1024, decoder_ffn_dim=1024, encoder_layers=2, decoder_layers=2)
    model = BRoPEASRForConditionalGeneration(config)
    residual_std = 0.02 / math.sqrt(2 * (2 + 2))

    def stds() -> dict[str, float]:
        return {name: p.std().item() for name, p in model.named_parameters()
                if name.endswith("weight") and p.dim() == 2 and p.shape[0] > 16 and "embed" not in name}

    def expected(name: str) -> float:  # truncated at 2 std: the std of the kept draws is 0.88 of the asked one
        return 0.88 * (residual_std if name.endswith(("out_proj.weight", "fc2.weight")) else 0.02)

    first = stds()
    assert sum(name.endswith(("out_proj.weight", "fc2.weight")) for name in first) == 3 * 2 + 2 * 2
    for name, std in first.items():
        assert std == pytest.approx(expected(name), rel=0.1), name
    with torch.no_grad():  # parents first this time: no module's init may undo another's
        for module in model.modules():
            model._init_weights(module)
    for name, std in stds().items():
        assert std == pytest.approx(expected(name), rel=0.1), name


# ---------------------------------------------------------------------------------- saving and bad input


@pytest.mark.parametrize("learned_rope_frequencies", [False, True])
@pytest.mark.parametrize("input_mode", INPUT_MODES)
def test_from_pretrained_reproduces_logits(tmp_path, input_mode, learned_rope_frequencies):
    # from_pretrained builds the model on the meta device: anything computed in __init__ rather than
    # loaded or recomputed (a frequency or window buffer) would come back as garbage here.
    torch.manual_seed(0)
    overrides = {**ALL_FEATURES, "input_mode": input_mode, "learned_rope_frequencies": learned_rope_frequencies}
    model = move_off_init(tiny_model(**overrides))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = BRoPEASRForConditionalGeneration.from_pretrained(tmp_path).eval()
    # Tied output projection: logits come from the token embedding; no separate lm_head is saved.
    assert not any("lm_head" in name for name in loaded.state_dict())
    inputs = audio_inputs(model.config, 3000, 2200)
    labels = decoder_ids(2, 7)
    expected, got = model(**inputs, labels=labels), loaded(**inputs, labels=labels)
    assert_close(got.logits, expected.logits, atol=1e-6)
    assert_close(got.loss, expected.loss, atol=1e-6)
    assert loaded.learned_mixes() == pytest.approx(model.learned_mixes())


def _mask_with(inputs, rows):
    return {"input_features": inputs["input_features"], "attention_mask": torch.tensor(rows, dtype=torch.bool)}


@pytest.mark.parametrize(
    "overrides, make_inputs, match",
    [
        pytest.param(
            dict(input_mode="spectrogram"), lambda x: {"waveform": x["waveform"]}, "needs `input_features`",
            id="spectrogram_mode_without_features",
        ),
        pytest.param(
            dict(input_mode="waveform"), lambda x: x, "does not take `input_features`", id="waveform_mode_with_features"
        ),
        pytest.param(
            dict(input_mode="both"), lambda x: {"input_features": x["input_features"]}, "needs `waveform`",
            id="both_mode_without_waveform",
        ),
        pytest.param(dict(), lambda x: {"input_features": torch.zeros(2, 64, 5)}, "num_mel_bins=80", id="64_mel_bins"),
        pytest.param(
            dict(max_source_positions=4), lambda x: {"input_features": x["input_features"]}, "max_source_positions=4",
            id="longer_than_max_source_positions",
        ),
        pytest.param(
            dict(input_mode="both"), lambda x: {**x, "waveform": x["waveform"][:, :-160]}, "same 5 frames",
            id="waveform_shorter_than_features",
        ),
        pytest.param(dict(), lambda x: _mask_with(x, [[1] * 5, [0, 1, 1, 1, 1]]), "right padding", id="left_padded"),
        pytest.param(dict(), lambda x: _mask_with(x, [[1] * 5, [1, 0, 1, 0, 0]]), "right padding", id="mask_with_hole"),
        pytest.param(dict(), lambda x: _mask_with(x, [[1] * 5, [0] * 5]), "right padding", id="empty_mask_row"),
        pytest.param(dict(), lambda x: _mask_with(x, [[1] * 5]), "attention_mask must be", id="mask_batch_mismatch"),
    ],
)
def test_forward_rejects_unusable_inputs(overrides, make_inputs, match):
    torch.manual_seed(0)
    config = tiny_config(**overrides)
    model = BRoPEASRForConditionalGeneration(config).eval()
    both = brope_asr.batch_inputs(random_clips(800, 800), tiny_config(input_mode="both"))
    inputs = {key: value for key, value in both.items() if key != "attention_mask"}
    with pytest.raises(ValueError, match=match):
        model(**make_inputs(inputs), decoder_input_ids=decoder_ids(2, 3))


def test_forward_rejects_overlong_or_missing_decoder_input():
    torch.manual_seed(0)
    model = tiny_model(max_target_positions=6)
    inputs = audio_inputs(model.config, 800, 800)
    model(**inputs, decoder_input_ids=decoder_ids(2, 6))
    with pytest.raises(ValueError, match="max_target_positions=6"):
        model(**inputs, decoder_input_ids=decoder_ids(2, 7))
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(**inputs)


# -------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def overfit_model():
    """A small model trained to memorize four short training clips, with its character tokenizer.

    Returns (model in eval mode, tokenizer, the clips' paths, transcripts, waveforms, final loss).
    """
    torch.manual_seed(0)
    rows = [row for row in read_metadata() if row["split"] == "train"]
    paths, texts, waveforms = [], [], []
    for row in rows:  # the first four clips under 1.2 s with distinct transcripts: fast to fit
        waveform = brope_asr.load_audio(str(DATA / row["file_name"]))
        if len(waveform) < 1.2 * SAMPLE_RATE and row["transcription"] not in texts:
            paths.append(DATA / row["file_name"])
            texts.append(row["transcription"])
            waveforms.append(waveform)
        if len(texts) == 4:
            break
    tokenizer = train_hf.build_tokenizer(texts)
    targets = [tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for text in texts]
    labels = torch.full((4, max(map(len, targets))), -100)
    for row, target in enumerate(targets):
        labels[row, : len(target)] = torch.tensor(target)

    config = tiny_config(
        vocab_size=len(tokenizer),
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_target_positions=64,  # windows of (64 - 2) / 30 = 2.07 s: every clip is one window
        init_std=0.02,
        input_mode="both",
        use_betweenness=True,
        blend_attention=True,
    )
    model = BRoPEASRForConditionalGeneration(config).train()
    inputs = brope_asr.batch_inputs(waveforms, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(150):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tokenizer, paths, texts, waveforms, loss.item()


def test_overfits_four_clips_and_transcribes_them_back(overfit_model):
    model, tokenizer, _, texts, waveforms, loss = overfit_model
    assert loss < 0.02
    assert brope_asr.transcribe(model, tokenizer, waveforms) == texts
    assert brope_asr.transcribe(model, tokenizer, waveforms, num_beams=3) == texts
    assert brope_asr.word_error_rate(brope_asr.transcribe(model, tokenizer, waveforms), texts) == 0.0


@pytest.mark.slow
def test_transcribe_cli_prints_good_files_and_names_bad_ones(overfit_model, tmp_path):
    model, tokenizer, paths, texts, waveforms, _ = overfit_model
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    good, good2 = str(paths[0]), str(tmp_path / "good2.wav")
    soundfile.write(good2, waveforms[1].numpy(), SAMPLE_RATE, subtype="PCM_16")  # the FLAC's own 16-bit samples
    missing, junk = str(tmp_path / "missing.flac"), tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 100)
    result = subprocess.run(
        [sys.executable, "brope_asr.py", "transcribe", "--model", str(model_dir), good, missing, str(junk), good2],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stdout.splitlines() == [f"{good}\t{texts[0]}", f"{good2}\t{texts[1]}"]
    errors = result.stderr.splitlines()
    for bad in (missing, str(junk)):
        assert sum(line.startswith(bad) for line in errors) == 1, result.stderr
    assert not any(good in line or good2 in line for line in errors), result.stderr


# --------------------------------------------------------------------------------------- long recordings


def test_speech_windows_cut_in_the_middle_of_pauses_and_fit_the_limit():
    generator = torch.Generator().manual_seed(0)
    bursts = [torch.randn(int(seconds * SAMPLE_RATE), generator=generator) * 0.1 for seconds in (0.9, 1.3, 0.5, 1.1)]
    recording, order = joined_recording(bursts, 20, pause=0.5)
    margin, limit = SAMPLE_RATE // 10, int(1.5 * SAMPLE_RATE)
    windows = brope_asr.speech_windows(recording, limit, margin)
    starts = np.cumsum([0] + [len(bursts[i]) + SAMPLE_RATE // 2 for i in order])[:-1]
    expected = [(max(0, s - margin), s + len(bursts[i]) + margin) for s, i in zip(starts, order)]
    assert windows == expected  # each burst alone with `margin` of its pauses; the rest, and the silent tail, skipped
    assert all(end - start <= limit for start, end in windows)
    assert brope_asr.speech_windows(recording[:limit], limit) == [(0, limit)]  # what fits is not cut
    steady = torch.randn(10 * SAMPLE_RATE, generator=generator)  # no pause at all: still cut to fit
    cut = brope_asr.speech_windows(steady, limit)
    assert cut[0][0] == 0 and cut[-1][1] == len(steady)
    assert all(end - start <= limit and end == next_start for (start, end), (next_start, _) in zip(cut, cut[1:]))


def test_speech_windows_end_an_utterance_at_every_long_pause_and_keep_short_gaps():
    generator = torch.Generator().manual_seed(1)
    word = lambda: torch.randn(int(0.4 * SAMPLE_RATE), generator=generator) * 0.1  # noqa: E731
    gap, pause = torch.zeros(int(0.2 * SAMPLE_RATE)), torch.zeros(int(0.5 * SAMPLE_RATE))
    utterances = [torch.cat([word(), gap, word(), gap, word()]) for _ in range(4)]  # 1.6 s each, 0.2-s gaps
    recording = torch.cat([part for u in utterances for part in (u, pause)])
    margin = SAMPLE_RATE // 10
    assert brope_asr.speech_windows(recording, len(recording), margin) == [(0, len(recording))]  # it fits: one
    windows = brope_asr.speech_windows(recording, 5 * SAMPLE_RATE, margin)  # three utterances would fit in one
    starts = [i * (len(utterances[0]) + len(pause)) for i in range(4)]
    assert windows == [(max(0, s - margin), s + len(utterances[0]) + margin) for s in starts]


def test_a_minute_long_recording_is_transcribed_in_windows_as_its_clips_are(overfit_model, tmp_path):
    model, tokenizer, _, texts, waveforms, _ = overfit_model
    recording, order = joined_recording(waveforms, 60, pause=0.6)
    assert len(recording) >= 60 * SAMPLE_RATE
    reference = " ".join(texts[i] for i in order)
    assert brope_asr.transcribe(model, tokenizer, [recording], max_window_seconds=1.5) == [reference]
    path = tmp_path / "long.wav"
    soundfile.write(path, recording.numpy(), SAMPLE_RATE, subtype="FLOAT")
    asr = transformers.pipeline("automatic-speech-recognition", model=str(save_run(model, tokenizer, tmp_path / "run")))
    assert asr(str(path), chunk_length_s=1.5, batch_size=8)["text"] == reference
    timed = asr(recording.numpy(), chunk_length_s=1.5, batch_size=8, return_timestamps=True)
    assert timed["text"] == reference and [chunk["text"] for chunk in timed["chunks"]] == [texts[i] for i in order]
    starts = np.cumsum([0] + [len(waveforms[i]) + int(0.6 * SAMPLE_RATE) for i in order])[:-1] / SAMPLE_RATE
    for chunk, start, i in zip(timed["chunks"], starts, order):  # each window holds its clip, and only it
        first, last = chunk["timestamp"]
        assert first <= start + 0.05 and start + len(waveforms[i]) / SAMPLE_RATE - 0.05 <= last <= first + 1.5
    assert all(a["timestamp"][1] <= b["timestamp"][0] for a, b in zip(timed["chunks"], timed["chunks"][1:]))
    with pytest.raises(ValueError, match="not 'word' timestamps"):
        asr(str(path), return_timestamps="word")


def test_a_file_is_transcribed_holding_a_block_at_a_time_by_transcribe_file_and_the_pipeline(overfit_model, tmp_path, monkeypatch):
    model, tokenizer, paths, texts, waveforms, _ = overfit_model
    recording, order = joined_recording(waveforms, 60, pause=0.6)
    path = tmp_path / "long.flac"
    soundfile.write(path, recording.numpy(), SAMPLE_RATE, subtype="PCM_24")
    held = []
    windows = brope_asr.speech_windows
    monkeypatch.setattr(brope_asr, "speech_windows", lambda audio, *a, **k: held.append(len(audio)) or windows(audio, *a, **k))
    text = brope_asr.transcribe_file(model, tokenizer, path, max_window_seconds=1.5, block_seconds=4.0)
    assert text == " ".join(texts[i] for i in order)
    assert max(held) <= (4.0 + 1.0 + 1.5) * SAMPLE_RATE  # a block, a read, and the window carried over: not the 60 s
    assert brope_asr.transcribe_file(model, tokenizer, paths[0]) == brope_asr.transcribe(model, tokenizer, [waveforms[0]])[0]
    with pytest.raises(ValueError, match="at least twice"):
        brope_asr.transcribe_file(model, tokenizer, path, max_window_seconds=1.5, block_seconds=2.0)
    held.clear()  # the pipeline reads a file path through the same blocks
    monkeypatch.setattr(brope_asr, "file_windows", functools.partial(brope_asr.file_windows, block_seconds=4.0))
    asr = transformers.pipeline("automatic-speech-recognition", model=str(save_run(model, tokenizer, tmp_path / "run")))
    timed = asr(str(path), chunk_length_s=1.5, batch_size=4, return_timestamps=True)
    assert timed["text"] == text
    assert max(held) <= (4.0 + 1.0 + 1.5) * SAMPLE_RATE
    # Windows cut block by block sit where the windows of the whole recording sit, a frame or so
    # apart (each block sets its own energy threshold for pauses), but the last may keep the
    # recording's final 0.6-s pause.
    whole = asr(recording.numpy(), chunk_length_s=1.5, batch_size=4, return_timestamps=True)["chunks"]
    assert [chunk["text"] for chunk in timed["chunks"]] == [chunk["text"] for chunk in whole]
    spans, whole_spans = (np.array([chunk["timestamp"] for chunk in chunks]) for chunks in (timed["chunks"], whole))
    assert np.abs(spans - whole_spans).ravel()[:-1].max() <= 0.03 and abs(spans[-1, 1] - whole_spans[-1, 1]) <= 0.6
    assert timed["chunks"][-1]["timestamp"][1] > 55.0


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim") or not Path("/proc/self/status").exists(), reason="glibc on Linux")
def test_release_freed_memory_hands_a_fragmented_heap_back_to_the_system():
    def resident() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    buffers = [torch.ones(16 * 1024) for _ in range(2000)]  # 125 MiB in 64-KiB pieces, on the heap (below mmap's threshold)
    kept = buffers[::10]  # every tenth stays, so the others are holes that free() alone does not return
    del buffers
    before = resident()
    brope_asr.release_freed_memory()
    assert before - resident() > 80 * 2**20 and len(kept) == 200


KEEP_FREED_MEMORY_PROBE = """
import resource, torch
import brope_asr

def faults_per_allocation():  # a 64-MiB tensor, above glibc's largest mmap threshold: mapped and unmapped each time by default
    for _ in range(3):
        torch.ones(16 * 2**20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(16 * 2**20)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10

torch.set_num_threads(1)
default = faults_per_allocation()
kept = brope_asr.keep_freed_memory()
print(default, kept, faults_per_allocation())
"""


@pytest.mark.skipif(brope_asr._glibc() is None, reason="glibc only")
def test_keep_freed_memory_stops_a_large_tensor_being_faulted_in_at_every_allocation():
    # A subprocess, since the setting is process-wide; without the environment's own malloc settings.
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_") and key != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", KEEP_FREED_MEMORY_PROBE], capture_output=True, text=True, check=True,
                            cwd=REPO, env=env)
    default, kept, after = result.stdout.split()
    # 64 MiB is 16,384 pages of 4 KiB, or 32 of 2 MiB where transparent huge pages are always on.
    assert float(default) >= 32 and kept == "True" and float(after) * 10 < float(default)


def test_the_training_command_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(train_hf, "keep_freed_memory", lambda: calls.append("keep"))
    monkeypatch.setattr(train_hf, "main", lambda argv: calls.append("main"))
    train_hf.run_as_script([])
    assert calls == ["keep", "main"]


@pytest.mark.parametrize("rate, channels", [(16000, 1), (8000, 1), (44100, 2), (22050, 1)])
def test_read_blocks_join_to_the_whole_file_at_any_rate(tmp_path, rate, channels):
    samples = 0.1 * np.random.default_rng(rate).standard_normal((int(2.37 * rate), channels)).astype(np.float32)
    path = tmp_path / "clip.wav"
    soundfile.write(path, samples, rate, subtype="FLOAT")
    blocks = list(brope_asr.read_blocks(path, block_seconds=0.25))
    assert len(blocks) >= 9 and max(map(len, blocks)) <= 0.25 * SAMPLE_RATE + 160
    torch.testing.assert_close(torch.cat(blocks), brope_asr.load_audio(path), rtol=0, atol=1e-6)


def test_read_blocks_name_the_file_for_bad_audio(tmp_path):
    soundfile.write(tmp_path / "nan.wav", np.r_[np.zeros(20000), np.nan].astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    (tmp_path / "junk.wav").write_bytes(b"not audio" * 100)
    for name, message in (("nan.wav", "clip contains NaN or Inf"), ("junk.wav", "cannot decode"), ("missing.wav", "no such file")):
        with pytest.raises(ValueError, match=f"{name}: {message}"):
            list(brope_asr.read_blocks(tmp_path / name, block_seconds=0.5))


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("blend_attention", [False, True])
@pytest.mark.parametrize("use_betweenness", [False, True])
def test_cached_decoding_steps_match_a_full_forward(use_betweenness, blend_attention):
    torch.manual_seed(0)
    model = move_off_init(tiny_model(use_betweenness=use_betweenness, blend_attention=blend_attention))
    inputs = audio_inputs(model.config, 3000, 2200)
    ids = decoder_ids(2, 10)
    full = model(**inputs, decoder_input_ids=ids).logits
    encoder_outputs = model.encoder(**inputs)
    cache = None
    # A prefix, a chunk of three (the explicit-mask path), then single tokens as generate feeds them.
    for start, end in ((0, 4), (4, 7), (7, 8), (8, 9), (9, 10)):
        step = model(
            encoder_outputs=encoder_outputs,
            attention_mask=inputs["attention_mask"],
            decoder_input_ids=ids[:, start:end],
            cache=cache,
            use_cache=True,
        )
        cache = step.cache
        assert cache.get_seq_length() == end  # the cache grows: only the new tokens were run
        assert step.logits.shape == (2, end - start, VOCAB)
        assert_close(step.logits, full[:, start:end], atol=1e-5)


@pytest.mark.parametrize("use_betweenness", [False, True])
def test_a_cached_decoding_step_rotates_only_its_new_tokens(use_betweenness, monkeypatch):
    # The cache holds rotated keys: a token's (b)RoPE position never changes once computed, so a
    # step must not rotate the whole past again (O(S) work per step, not O(S_total)).
    torch.manual_seed(0)
    model = move_off_init(tiny_model(use_betweenness=use_betweenness))
    inputs = audio_inputs(model.config, 3000)
    encoder_outputs = model.encoder(**inputs)
    rotated, apply = [], brope_asr.Rotation.apply
    monkeypatch.setattr(brope_asr.Rotation, "apply", lambda x, angles: rotated.append(x.shape[2]) or apply(x, angles))
    cache, ids = None, decoder_ids(1, 9)
    for start, end in ((0, 6), (6, 7), (7, 8), (8, 9)):
        rotated.clear()
        cache = model(encoder_outputs=encoder_outputs, decoder_input_ids=ids[:, start:end], cache=cache, use_cache=True).cache
        assert rotated and set(rotated) == {end - start}  # queries and keys of the new tokens only
    assert cache.get_seq_length() == 9


@pytest.mark.parametrize("features_on", [False, True])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_generation_equals_uncached(num_beams, features_on):
    torch.manual_seed(0)
    model = move_off_init(tiny_model(use_betweenness=features_on, blend_attention=features_on))
    inputs = audio_inputs(model.config, 3000, 4500)
    # A random tied-embedding model tends to echo its last token; forbidding repeats (and eos) makes
    # every step's argmax depend on the logits, so a wrong cache shows up in the ids too.
    options = dict(
        max_new_tokens=8,
        min_new_tokens=8,
        num_beams=num_beams,
        do_sample=False,
        no_repeat_ngram_size=1,
        output_scores=True,
        return_dict_in_generate=True,
    )
    cached = model.generate(**inputs, use_cache=True, **options)
    uncached = model.generate(**inputs, use_cache=False, **options)
    assert cached.sequences.shape == (2, 9)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert len(cached.scores) == len(uncached.scores) == 8
    for cached_scores, uncached_scores in zip(cached.scores, uncached.scores):
        assert_close(cached_scores, uncached_scores, atol=1e-4)


def test_ctc_rescoring_keeps_each_clips_beam_hypothesis_with_the_best_joint_score():
    torch.manual_seed(0)
    model = move_off_init(tiny_model(ctc_weight=0.3))
    inputs = audio_inputs(model.config, 3000, 4500, 2000, 5000)
    beams, options = 4, dict(max_new_tokens=6, no_repeat_ngram_size=1)  # no repeats: hypotheses that differ
    model.config.ctc_rescoring_weight = 0.0  # the beam alone: its 4 hypotheses per clip, best first
    nbest = model.generate(**inputs, num_beams=beams, num_return_sequences=beams, **options)  # (4 x 4, S)
    assert torch.equal(model.generate(**inputs, num_beams=beams, **options), nbest[::beams])

    # Independent scores: the decoder's summed log-probabilities of each hypothesis up to its first
    # eos, and CTC's log-likelihood of it without eos (F.ctc_loss of the CTC head on the real frames).
    encoded = model(**inputs, decoder_input_ids=nbest[::beams, :1])
    log_probs = model.ctc_head(encoded.encoder_last_hidden_state).log_softmax(-1)  # (4, T', V)
    frames = model.encoder.output_valid(inputs["attention_mask"]).sum(1)
    attention, ctc = [], []
    for row, hypothesis in enumerate(nbest.tolist()):
        clip, tokens = row // beams, hypothesis[1:]
        tokens = tokens[: tokens.index(2) + 1] if 2 in tokens else tokens  # up to its eos
        clip_inputs = {name: value[clip : clip + 1] for name, value in inputs.items()}
        logits = model(**clip_inputs, labels=torch.tensor([tokens])).logits[0]
        attention.append(logits.log_softmax(-1)[torch.arange(len(tokens)), tokens].sum())
        target = [token for token in tokens if token > 3]
        ctc.append(-F.ctc_loss(log_probs[clip, : frames[clip], None], torch.tensor([target]), [int(frames[clip])],
                               [len(target)], blank=0, reduction="sum"))
    attention, ctc = torch.stack(attention), torch.stack(ctc)
    chosen = []
    for weight in (0.3, 1.0):
        model.config.ctc_rescoring_weight = weight
        best = ((1 - weight) * attention + weight * ctc).view(-1, beams).argmax(1)
        rescored = model.generate(**inputs, num_beams=beams, **options)
        assert torch.equal(rescored, nbest.view(4, beams, -1)[torch.arange(4), best])
        chosen.append(best)
    assert any(bool((best != 0).any()) for best in chosen)  # the rescoring changed a choice
    assert torch.equal(model.generate(**inputs, **options), model.generate(**inputs, num_beams=1, **options))  # greedy: no beam
    with pytest.raises(ValueError, match="ctc_rescoring_weight"):
        model.generate(**inputs, num_beams=beams, num_return_sequences=2, **options)


def test_duration_bound_cuts_a_runaway_decode_for_every_clip_and_beam():
    torch.manual_seed(0)
    config = tiny_config(max_tokens_per_second=10.0, max_target_positions=64)
    model = tiny_model(max_tokens_per_second=10.0, max_target_positions=64)
    inputs = audio_inputs(config, 16000, 4000)  # 1 s and 0.25 s: at most 11 and 4 tokens with eos
    limits = brope_asr.duration_token_limits(inputs["attention_mask"].sum(1), config)
    assert limits.tolist() == [11, 4]
    for num_beams in (1, 3):
        ids = model.generate(**inputs, num_beams=num_beams, max_new_tokens=60, suppress_tokens=[config.eos_token_id])
        for row, limit in zip(ids[:, 1:], limits.tolist()):  # tokens after the start token
            ends = (row == config.eos_token_id).nonzero()
            assert len(ends) and int(ends[0]) + 1 == limit  # eos is forced exactly at the limit, never later


# ------------------------------------------------------------------ Hugging Face: Auto classes, pipeline


def save_run(model, tokenizer, folder: Path) -> Path:
    """A run folder as train_hf.py writes it: model, processor (feature extractor and tokenizer), module file."""
    model.save_pretrained(folder)
    brope_asr.BRoPEASRProcessor(brope_asr.BRoPEASRFeatureExtractor.from_model_config(model.config), tokenizer).save_pretrained(folder)
    return folder


def joined_recording(waveforms: list[torch.Tensor], count: int, pause: float) -> tuple[torch.Tensor, list[int]]:
    """`count` clips cycling through `waveforms`, each followed by `pause` seconds of silence.

    Returns (the recording, the index into `waveforms` of each clip in order).
    """
    order = [i % len(waveforms) for i in range(count)]
    silence = torch.zeros(int(pause * SAMPLE_RATE))
    return torch.cat([part for i in order for part in (waveforms[i], silence)]), order


def test_feature_extractor_gives_batch_inputs_and_resamples(overfit_model):
    model, _, _, _, waveforms, _ = overfit_model
    features = brope_asr.BRoPEASRFeatureExtractor.from_model_config(model.config)
    expected = brope_asr.batch_inputs(waveforms, model.config)
    got = features(waveforms, sampling_rate=SAMPLE_RATE)
    assert set(got) == set(expected) == {"input_features", "waveform", "attention_mask"}
    for name in expected:
        assert torch.equal(got[name], expected[name])
    at_8k = brope_asr.resample(waveforms[0], SAMPLE_RATE, 8000)
    assert torch.equal(features(at_8k, sampling_rate=8000)["input_features"],
                       brope_asr.batch_inputs([brope_asr.resample(at_8k, 8000)], model.config)["input_features"])
    with pytest.raises(ValueError, match="clip 1"):
        features([waveforms[0], torch.full((800,), float("nan"))], sampling_rate=SAMPLE_RATE)


@pytest.mark.slow
def test_auto_classes_and_pipeline_load_a_run_in_a_process_that_never_imported_brope_asr(overfit_model, tmp_path):
    model, tokenizer, paths, texts, _, _ = overfit_model
    run = save_run(model, tokenizer, tmp_path / "run")
    assert (run / "brope_asr.py").exists()
    script = f"""
import sys
from transformers import AutoConfig, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline
config = AutoConfig.from_pretrained({str(run)!r}, trust_remote_code=True)
model = AutoModelForSpeechSeq2Seq.from_pretrained({str(run)!r}, trust_remote_code=True)
processor = AutoProcessor.from_pretrained({str(run)!r}, trust_remote_code=True)
asr = pipeline("automatic-speech-recognition", model={str(run)!r}, trust_remote_code=True)
assert "brope_asr" not in sys.modules, "the test must not import the repository's module"
print(type(config).__name__, type(model).__name__, type(processor).__name__, type(asr).__name__)
print(asr({str(paths[0])!r})["text"])
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert result.returncode == 0, result.stderr
    names, text = result.stdout.splitlines()[-2:]
    assert names == "BRoPEASRConfig BRoPEASRForConditionalGeneration BRoPEASRProcessor SpeechRecognitionPipeline"
    assert text == texts[0]


def test_pipeline_gives_the_transcribe_text_for_a_file_an_array_and_a_batch(overfit_model, tmp_path):
    model, tokenizer, paths, texts, waveforms, _ = overfit_model
    asr = transformers.pipeline("automatic-speech-recognition", model=str(save_run(model, tokenizer, tmp_path / "run")))
    assert isinstance(asr, brope_asr.SpeechRecognitionPipeline)
    assert asr(str(paths[0]))["text"] == brope_asr.transcribe(model, tokenizer, [waveforms[0]])[0] == texts[0]
    assert asr(waveforms[1].numpy())["text"] == texts[1]
    assert asr(torch.stack([waveforms[1], waveforms[1]]).numpy())["text"] == texts[1]  # stereo: channels averaged
    at_8k = brope_asr.resample(waveforms[2], SAMPLE_RATE, 8000).numpy()
    expected = brope_asr.transcribe(model, tokenizer, [brope_asr.resample(at_8k, 8000)])[0]
    assert asr({"raw": at_8k, "sampling_rate": 8000})["text"] == expected
    batch = [str(paths[0]), waveforms[1].numpy(), {"array": at_8k, "sampling_rate": 8000}, waveforms[3].numpy()]
    assert [out["text"] for out in asr(batch, batch_size=3)] == [texts[0], texts[1], expected, texts[3]]
    with pytest.raises(ValueError, match="stride_length_s"):
        asr(waveforms[0].numpy(), chunk_length_s=5, stride_length_s=1)


def test_a_model_loaded_in_bf16_transcribes_through_transcribe_and_the_pipeline(overfit_model, tmp_path):
    # Models are served loaded in bf16 (fp16 on a GPU): the float32 log-mel must reach them in their own dtype.
    model, tokenizer, paths, texts, waveforms, _ = overfit_model
    run = save_run(model, tokenizer, tmp_path / "run")
    half = BRoPEASRForConditionalGeneration.from_pretrained(run, dtype=torch.bfloat16).eval()
    assert half.dtype == torch.bfloat16
    assert brope_asr.transcribe(half, tokenizer, waveforms) == texts
    asr = transformers.pipeline("automatic-speech-recognition", model=str(run), dtype=torch.bfloat16)
    assert asr.model.dtype == torch.bfloat16
    assert [out["text"] for out in asr([str(path) for path in paths], batch_size=2)] == texts


def test_long_audio_report_joins_test_clips_and_scores_against_their_transcripts(overfit_model, tmp_path):
    from tools import bench_brope_asr

    model, tokenizer, paths, texts, _, _ = overfit_model
    run = save_run(model, tokenizer, tmp_path / "run")
    data = write_corpus(tmp_path / "data", [
        {"file_name": str(path), "transcription": text, "split": "test"} for path, text in zip(paths, texts)
    ])
    report = bench_brope_asr.long_audio_report(str(run), minutes=(0.25,), data_dir=str(data), max_window_seconds=1.5)
    header, rows = report.splitlines()[0], [line for line in report.splitlines() if line.startswith("| 0.")]
    assert "windows of at most 1.5 s; 4 test clips, WER decoded one by one 0.00%" in header
    (row,) = rows
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2] == "0.00%"  # its clips one by one: the reference is exactly their transcripts joined
    assert float(cells[1].rstrip("%")) >= 0 and float(cells[3]) > 0 and " / " in cells[4]  # file WER, RTF, memory
    # The bound: one batch of full 1.5-s windows, every one decoded to its duration limit (eos never ends it early).
    limit = int(brope_asr.duration_token_limits(torch.tensor([int(1.5 * SAMPLE_RATE) // brope_asr.HOP_LENGTH]), model.config))
    (bound,) = [line for line in report.splitlines() if line.startswith("| the bound:")]
    assert f"32 windows of 1.5 s, each decoded to its limit ({limit} tokens)" in bound and " / " in bound


# ----------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    "metric, predictions, references, expected",
    [
        # one substitution (sat -> sit), one deletion (the): 2 edits over 6 reference words
        ("word", ["the cat sit", "on mat"], ["the cat sat", "on the mat"], 2 / 6),
        ("word", ["the big cat"], ["the cat"], 1 / 2),  # one insertion
        ("word", ["a b c"], ["x"], 3 / 1),  # a substitution and two insertions: WER exceeds 1
        ("word", [""], ["the cat"], 1.0),  # empty prediction: every word deleted
        ("word", ["  the   cat "], ["the cat"], 0.0),  # words split on any whitespace
        ("char", ["abd", "d"], ["abc", "de"], 2 / 5),  # a substitution and a deletion
        ("char", ["ab"], ["a b"], 1 / 3),  # the space is a character
        ("char", [" ab "], ["ab"], 0.0),  # outer whitespace is stripped
        ("char", [""], ["abc"], 1.0),
    ],
)
def test_error_rates_on_hand_worked_examples(metric, predictions, references, expected):
    error_rate = brope_asr.word_error_rate if metric == "word" else brope_asr.char_error_rate
    assert error_rate(predictions, references) == pytest.approx(expected)


@pytest.mark.parametrize("error_rate", [brope_asr.word_error_rate, brope_asr.char_error_rate])
def test_error_rates_reject_mismatched_lengths_and_empty_references(error_rate):
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="undefined"):
        error_rate(["a"], [""])


def test_token_scores_on_hand_worked_example():
    # Positions with label -100 are dropped, whatever was predicted there (5 and 7). Left:
    #   label 0 0 1 1 2 2 2 1
    #   pred  0 1 1 1 2 2 3 0     accuracy 5/8
    # class  support  predicted  correct  precision  recall  F1
    #   0       2         2         1        1/2       1/2    1/2
    #   1       3         3         2        2/3       2/3    2/3
    #   2       3         2         2        1         2/3    4/5
    #   3       0         1         0        0         0      0    (only predicted: weight 0)
    # weighted by support / 8: precision (1 + 2 + 3) / 8, recall (1 + 2 + 2) / 8, F1 (1 + 2 + 2.4) / 8,
    # as sklearn's precision_recall_fscore_support(average="weighted", zero_division=0).
    labels = torch.tensor([[0, 0, 1, 1, -100], [2, 2, 2, 1, -100]])
    predictions = torch.tensor([[0, 1, 1, 1, 5], [2, 2, 3, 0, 7]])
    expected = {"accuracy": 5 / 8, "precision": 6 / 8, "recall": 5 / 8, "f1": 5.4 / 8}
    assert brope_asr.token_scores(predictions, labels) == pytest.approx(expected)
    # The same example with class 2 as the ignored index: labels 0 0 1 1 1, predictions 0 1 1 1 0;
    # class 0: 2 support, 2 predicted, 1 correct; class 1: 3, 3, 2 -> every score (2/2 + 3 * 2/3) / 5.
    scores = brope_asr.token_scores(predictions.numpy(), labels.masked_fill(labels == -100, 2).numpy(), ignore_index=2)
    assert scores == pytest.approx({"accuracy": 3 / 5, "precision": 3 / 5, "recall": 3 / 5, "f1": 3 / 5})


def test_token_scores_of_a_prediction_count_only_the_transcript_and_its_eos():
    # Seq2SeqTrainer pads each batch's labels to the generation length with the pad token (0), not
    # -100; greedy search pads a finished row with the pad token, beam search with eos (2). The
    # same correct transcript must score the same either way, and the padding must not count.
    tokenizer = train_hf.build_tokenizer(["one two"])
    one, two = (tokenizer(word, add_special_tokens=False).input_ids for word in ("one", "two"))
    labels = np.array([[*one, 2, 0, 0, -100], [*two, 2, 0, 0, 0]])  # two batches' padding: 0s, then -100
    greedy = np.array([[1, *one, 2, 0, 0, 0], [1, *two, 2, 0, 0, 0]])
    beam = np.array([[1, *one, 2, 2, 2, 2], [1, *two[:2], one[1], 2, 2, 2, 2]])  # the second row ends "twn"
    scores = []
    for generated in (greedy, beam):
        prediction = transformers.trainer_utils.PredictionOutput(predictions=generated, label_ids=labels, metrics={})
        hypotheses, references, aligned, kept = train_hf.decode_prediction(prediction, tokenizer)
        assert references == ["one", "two"] and (kept != -100).sum() == 8  # 3 letters and eos, twice
        scores.append(brope_asr.token_scores(aligned, kept)["accuracy"])
    assert scores == [1.0, 7 / 8]


def test_token_scores_reject_unusable_inputs():
    with pytest.raises(ValueError, match="one shape"):
        brope_asr.token_scores(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="ignore_index"):
        brope_asr.token_scores(torch.zeros(2, 3), torch.full((2, 3), -100))


def test_error_rates_by_source_split_the_test_set():
    rates = train_hf.error_rates_by_source(["one two", "one", "three"], ["one two", "two", "three"], ["a", "b", "b"])
    assert rates == {"wer_a": 0.0, "cer_a": 0.0, "wer_b": 0.5, "cer_b": 3 / 8}


# ------------------------------------------------------------------- train_hf.py: data, training, faults


def write_corpus(folder: Path, rows: list[dict]) -> Path:
    """A corpus folder: metadata.csv listing `rows` (file_name relative to `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def small_corpus(folder: Path, train: int = 8, validation: int = 4, test: int = 4) -> tuple[Path, list[dict]]:
    """The first clips of each split of data/, referenced by absolute path from a new metadata.csv."""
    table = read_metadata()
    counts = {"train": train, "validation": validation, "test": test}
    rows = [
        {**row, "file_name": str(DATA / row["file_name"])}
        for split, count in counts.items()
        for row in [r for r in table if r["split"] == split][:count]
    ]
    return write_corpus(folder, rows), rows


def run_train(data_dir: Path, output_dir: Path, *extra: str, greedy: bool = True) -> dict:
    """A four-step train_hf.py run (evaluation and checkpoint every two steps) on `data_dir`.

    `greedy` decodes the final scores with `--num-beams 1` too (the evaluations during training are
    greedy by default): a four-step model writes to its length limit, and the default's beam of 8
    with CTC rescoring would multiply the suite's time; the end-to-end test keeps it.
    """
    argv = ["--data-dir", str(data_dir), "--output-dir", str(output_dir), "--max-steps", "4", "--eval-steps", "2",
            "--batch-size", "4", "--warmup-steps", "1", *(["--num-beams", "1"] if greedy else []), *extra]
    return train_hf.main(argv)


def test_character_tokenizer_round_trips_and_maps_unknown_characters_to_unk(tmp_path):
    tokenizer = train_hf.build_tokenizer(["one two", "three"])
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [0, 1, 2, 3]
    ids = tokenizer("two three", add_special_tokens=False).input_ids
    assert len(ids) == len("two three") and tokenizer.decode(ids) == "two three"
    assert tokenizer("zoo", add_special_tokens=False).input_ids[0] == tokenizer.unk_token_id
    tokenizer.save_pretrained(tmp_path)
    loaded = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert loaded.decode([1, *ids, 2, 0], skip_special_tokens=True) == "two three"


def test_bpe_tokenizer_round_trips_any_text_exactly_and_through_save(tmp_path):
    texts = ["one two three", "seven seven eight", "nine oh five"] * 20
    tokenizer = train_hf.build_bpe_tokenizer(texts, 300)
    assert 260 < len(tokenizer) <= 300  # bytes and specials, then merges until none is left to learn
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [0, 1, 2, 3]
    seven = tokenizer("seven", add_special_tokens=False).input_ids
    assert len(seven) < len("seven")  # merges learned from the transcripts
    tokenizer.save_pretrained(tmp_path)
    loaded = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
    for text in ["seven seven eight", "zoë says 42, naïvely!", "  two spaces", "日本"]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
        assert loaded.decode([1, *ids, 2, 0], skip_special_tokens=True) == text
    with pytest.raises(ValueError, match="at least 260"):
        train_hf.build_bpe_tokenizer(texts, 100)


def test_collator_pads_to_the_longest_clip_and_augments_only_marked_rows():
    torch.manual_seed(0)
    config = tiny_config(input_mode="both")
    collate = train_hf.Collator(config)
    clips = random_clips(4000, 2500)
    rows = [{"audio": in_memory(clip), "labels": [5, 6, 2][: 3 - i], "augment": False} for i, clip in enumerate(clips)]
    batch = collate(rows)
    expected = brope_asr.batch_inputs(clips, config)
    for name in ("input_features", "waveform", "attention_mask"):
        torch.testing.assert_close(batch[name], expected[name], rtol=0, atol=0)
    assert batch["labels"].tolist() == [[5, 6, 2], [5, 6, -100]]
    assert not collate.frames  # evaluation batches are not counted
    augmented = collate([{**row, "augment": True} for row in rows])
    assert not torch.equal(augmented["waveform"], batch["waveform"][:, : augmented["waveform"].shape[1]])
    counted = train_hf.Collator(config, augmentations=())  # lengths unchanged: 4000 and 2500 samples, 25 and 15 mel frames
    counted([{**row, "augment": True} for row in rows])
    assert counted.frames == {"real": 25 + 15, "padded": 10}


@pytest.mark.slow
def test_train_hf_trains_saves_and_the_saved_model_transcribes(tmp_path):
    data, rows = small_corpus(tmp_path / "data")
    output = tmp_path / "run"
    results = run_train(data, output, "--input-mode", "both", "--betweenness", "--blend-attention", greedy=False)  # the default's CTC and beam
    assert 0 <= results["test_wer"] and 0 <= results["test_cer"] and results["train_seconds"] > 0
    with open(output / "metrics.csv", newline="") as file:
        history = list(csv.DictReader(file))
    assert [row["step"] for row in history] == ["2", "4"]
    assert set(history[0]) == set(train_hf.MetricsTable.COLUMNS)
    assert (output / "model.safetensors").exists() and (output / "checkpoint-4" / "model.safetensors").exists()
    assert (output / "brope_asr.py").exists() and (output / "processor_config.json").exists()
    assert transformers.GenerationConfig.from_pretrained(output).num_beams == train_hf.RESCORING_BEAMS  # decodes as the final scores did
    processor = transformers.AutoProcessor.from_pretrained(output)  # saved with the model, found by AutoProcessor
    assert isinstance(processor, brope_asr.BRoPEASRProcessor) and processor.feature_extractor.input_mode == "both"
    with open(output / "mixes.csv", newline="") as file:
        mixes = list(csv.DictReader(file))
    assert [row["step"] for row in mixes] == ["2", "4"]
    for row in mixes:
        assert -1 <= float(row["gate_value"]) <= 1 and 0 <= float(row["blend_logit_value"]) <= 1
        assert 1 <= float(row["log_temperature_value"]) <= 100 and 0 <= float(row["input_blend_logit_value"]) <= 1
        assert all(0 <= float(row[f"{kind}_consistency"]) <= 1 + 1e-6 for kind in train_hf.MIXES)
        assert float(row["other_step_size"]) > 0 and float(row["gate_step_size"]) > 0
        assert all(0 <= float(row[f"score_{part}_mean"]) <= 1 for part in ("encoder", "decoder"))  # bRoPE's score, measured
    test_file = next(row["file_name"] for row in rows if row["split"] == "test")
    result = subprocess.run(
        [sys.executable, "brope_asr.py", "transcribe", "--model", str(output), test_file],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stdout.startswith(f"{test_file}\t")


def test_evaluations_during_training_decode_with_their_beam_and_final_scores_with_the_saved_one(tmp_path):
    data, rows = small_corpus(tmp_path / "data", train=2, validation=2, test=4)
    args = train_hf.parse_args(["--data-dir", str(data), "--output-dir", str(tmp_path / "run"), "--max-steps", "4", "--num-beams", "3"])
    assert args.eval_num_beams == 1  # greedy evaluations pick the checkpoint by default
    tokenizer = train_hf.build_tokenizer([row["transcription"] for row in rows])
    config = train_hf.make_config(args, tokenizer)
    test = train_hf.prepare_split(train_hf.load_splits(args)["test"], "test", tokenizer, config, skip_bad=False, decode=True)
    model = BRoPEASRForConditionalGeneration(config).eval()
    model.generation_config.num_beams = args.num_beams  # as train_hf.main saves it
    trainer = train_hf.ASRTrainer(model=model, args=train_hf.training_arguments(args, max_label=20), eval_dataset=test,
                                  data_collator=train_hf.Collator(config), compute_metrics=train_hf.metrics_function(tokenizer))
    widths, generate = [], model.generate
    model.generate = lambda *a, **kw: widths.append(kw.get("num_beams")) or generate(*a, **kw)
    trainer.evaluate()  # as during training
    assert widths and set(widths) == {1}
    widths.clear()
    scores = train_hf.score_by_source(trainer, test, "test", tokenizer)
    assert widths and set(widths) == {3} and "test_wer_espeak-ng" in scores
    for flag in ("--num-beams", "--eval-num-beams"):
        with pytest.raises(ValueError, match=flag):
            train_hf.check_args(train_hf.parse_args([flag, "0"]))


def test_learned_mixes_get_their_own_optimizer_group_without_weight_decay(tmp_path):
    model = BRoPEASRForConditionalGeneration(tiny_config(**ALL_FEATURES))
    arguments = transformers.Seq2SeqTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1,
                                                      use_cpu=True, report_to="none")
    trainer = train_hf.ASRTrainer(model=model, args=arguments, mix_learning_rate_scale=10.0)
    groups = trainer.create_optimizer().param_groups
    mixes = {id(p) for p in train_hf.mix_parameters(model).values()}
    kinds = {name.rsplit(".", 1)[-1] for name in train_hf.mix_parameters(model)}
    assert kinds == set(train_hf.MIXES)  # every kind of mix is found by name
    (mix_group,) = [group for group in groups if {id(p) for p in group["params"]} & mixes]
    assert {id(p) for p in mix_group["params"]} == mixes
    assert mix_group["weight_decay"] == 0.0 and mix_group["lr"] == pytest.approx(1e-2)
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))
    assert any(group["weight_decay"] == 0.1 for group in groups)


def test_mix_tracker_records_the_betweenness_score_of_each_windows_last_step_and_the_shift_spread_in_tokens():
    torch.manual_seed(0)
    config = tiny_config(use_betweenness=True)
    model = BRoPEASRForConditionalGeneration(config).train()
    inputs = {**audio_inputs(config, 4000, 3000), "labels": torch.tensor([[5, 6, 7, 8, 9, 2], [5, 6, 7, 2, -100, -100]])}
    tracker = train_hf.MixTracker(every=2)
    tracker.on_train_begin(None, None, None, model=model)
    shifts = []  # what bRoPE's forward itself returns, the independent check below
    spy = [m.register_forward_hook(lambda m, a, kw, out: shifts.append((kw["causal"], out.detach())), with_kwargs=True)
           for m in model.modules() if isinstance(m, brope_asr.BetweennessShift)]

    def run_window(first_step):
        for step in (first_step, first_step + 1):
            tracker.on_step_begin(None, SimpleNamespace(global_step=step), None)
            assert bool(tracker.measuring) == (step == first_step + 1)  # only a window's last step is measured
            shifts.clear()
            model(**inputs).loss.backward()
            tracker.on_step_end(None, SimpleNamespace(global_step=step + 1), None, model=model)
        return tracker.rows[-1]

    row = run_window(0)
    assert row["step"] == 2 and len(tracker.rows) == 1 and tracker.scores == []
    for part in ("encoder", "decoder"):
        assert 0 < row[f"score_{part}_mean"] < 1 and 0 < row[f"score_{part}_spread"] < 0.5
        assert row[f"shift_{part}_spread"] == 0.0  # the gate starts at 0: no shift at all
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, brope_asr.BetweennessShift):
                module.gate.fill_(math.atanh(0.5))
    row = run_window(2)
    for part, causal in (("encoder", False), ("decoder", True)):
        scores = [clip / (config.betweenness_max_shift * 0.5) for c, out in shifts if c == causal for clip in out[:, 0]]
        assert row[f"score_{part}_mean"] == pytest.approx(torch.cat([s[s > 0] for s in scores]).mean().item(), rel=1e-5)
        spreads = [s[s > 0].std(correction=0).item() for s in scores if (s > 0).sum() > 1]  # within each clip of each layer
        assert row[f"score_{part}_spread"] == pytest.approx(statistics.mean(spreads), rel=1e-5)
        assert row[f"shift_{part}_spread"] == pytest.approx(config.betweenness_max_shift * 0.5 * row[f"score_{part}_spread"], rel=1e-5)
    tracker.on_train_end(None, None, None)
    tracker.measuring = True
    model(**inputs)
    assert tracker.hooks == [] and tracker.scores == []  # no hook left behind
    for hook in spy:
        hook.remove()


def test_a_planned_batch_weighs_its_training_loss_by_its_loss_scale(tmp_path):
    torch.manual_seed(0)
    config = tiny_config(dropout=0.0)
    model = BRoPEASRForConditionalGeneration(config).train()
    arguments = transformers.Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = train_hf.ASRTrainer(model=model, args=arguments)
    inputs = {**audio_inputs(config, 4000, 3000), "labels": torch.tensor([[5, 6, 2], [5, 2, -100]])}
    plain = trainer.compute_loss(model, dict(inputs))
    scaled = trainer.compute_loss(model, {**inputs, "loss_scale": torch.tensor(2.5)})
    assert scaled.item() == pytest.approx(2.5 * plain.item(), rel=1e-6) and plain.item() > 0


def test_length_parts_crop_each_run_of_like_clips_to_its_own_longest():
    config = tiny_config(input_mode="both")
    inputs = dict(brope_asr.batch_inputs(random_clips(4000, 1200, 2500, 800, 3000), config))
    inputs["labels"] = torch.tensor([[5, 6, 7, 2], [5, 2, -100, -100], [5, 6, 2, -100], [2, -100, -100, -100], [5, 6, 7, 2]])
    parts = train_hf.length_parts(inputs, 3)
    frames = inputs["attention_mask"].sum(1)
    assert [part["attention_mask"].sum(1).tolist() for part in parts] == [[5, 7], [15, 18], [25]]  # 800, 1200 | 2500, 3000 | 4000
    for part, rows in zip(parts, ([3, 1], [2, 4], [0])):
        length = int(frames[rows].max())
        assert part["attention_mask"].shape == (len(rows), length) and part["waveform"].shape == (len(rows), 160 * length)
        torch.testing.assert_close(part["input_features"], inputs["input_features"][rows, :, :length], rtol=0, atol=0)
        assert (part["labels"] != -100).sum(1).max() == part["labels"].shape[1]  # no column of padding alone
        assert torch.equal(part["labels"], inputs["labels"][rows, : part["labels"].shape[1]])


@pytest.mark.parametrize("micro_batches", [2, 3, 5])
def test_micro_batches_give_the_whole_batch_loss_and_gradient(tmp_path, micro_batches):
    torch.manual_seed(0)
    config = tiny_config(dropout=0.0, input_mode="both", normalize_features=True, absolute_encoder_positions=True,
                         ctc_weight=0.3)  # CTC is a sum over clips over the label tokens too, so it splits exactly
    inputs = dict(brope_asr.batch_inputs(random_clips(4000, 1200, 2500, 800, 3000), config))
    inputs["labels"] = torch.tensor([[5, 6, 7, 2], [5, 2, -100, -100], [5, 6, 2, -100], [2, -100, -100, -100], [5, 6, 7, 2]])
    state = BRoPEASRForConditionalGeneration(config).state_dict()
    results = []
    for count in (1, micro_batches):
        model = BRoPEASRForConditionalGeneration(config)
        model.load_state_dict(state)
        arguments = transformers.Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
        trainer = train_hf.ASRTrainer(model=model, args=arguments, micro_batches=count)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this test does not run
        loss = trainer.training_step(model, {**inputs, "loss_scale": torch.tensor(0.5)})
        results.append((loss, [parameter.grad for parameter in model.parameters()]))
    (whole, whole_grads), (parts, part_grads) = results
    assert parts.item() == pytest.approx(whole.item(), rel=1e-5) and whole.item() > 0
    for expected, got in zip(whole_grads, part_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert trainer.splits_batches()
    with pytest.raises(ValueError, match="micro_batches must be >= 1"):
        train_hf.ASRTrainer(model=model, args=arguments, micro_batches=0)


def test_held_out_speaker_leaves_training_and_validation_and_replaces_the_test_split(tmp_path):
    table = read_metadata()
    fsdd = [{**row, "file_name": str(DATA / row["file_name"])} for row in table if row["source"] == "fsdd"]
    rows = [row for split in ("train", "validation", "test") for speaker in sorted({r["speaker"] for r in fsdd})
            for row in [r for r in fsdd if r["split"] == split and r["speaker"] == speaker][:2]]
    speaker = next(row["speaker"] for row in rows if row["split"] == "train")
    data = write_corpus(tmp_path / "data", rows)
    splits = train_hf.load_splits(train_hf.parse_args(["--data-dir", str(data), "--hold-out-speaker", speaker]))
    expected = sorted(row["file_name"] for row in rows if row["speaker"] == speaker and row["split"] != "test")
    assert sorted(list(splits["test"]["audio"])) == expected and expected
    assert speaker not in list(splits["train"]["speaker"]) + list(splits["validation"]["speaker"])
    test_files = {row["file_name"] for row in rows if row["split"] == "test"}
    assert test_files and not test_files & set(splits["test"]["audio"])  # the real test split is not read
    with pytest.raises(ValueError, match="nobody"):
        train_hf.load_splits(train_hf.parse_args(["--data-dir", str(data), "--hold-out-speaker", "nobody"]))


@pytest.mark.slow
def test_train_hf_accepts_a_saved_tokenizer(tmp_path):
    data, _ = small_corpus(tmp_path / "data", train=4, validation=2, test=0)
    train_hf.build_tokenizer(["zero one two three four five six seven eight nine"]).save_pretrained(tmp_path / "tok")
    run_train(data, tmp_path / "run", "--tokenizer", str(tmp_path / "tok"), "--max-steps", "1", "--test-split", "")
    saved = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "run")
    assert saved.get_vocab() == transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok").get_vocab()


@pytest.mark.slow
def test_train_hf_trains_with_a_bpe_tokenizer_that_transcribe_reads(tmp_path):
    data, rows = small_corpus(tmp_path / "data", train=4, validation=2, test=0)
    run_train(data, tmp_path / "run", "--tokenizer", "bpe:280", "--max-steps", "1", "--test-split", "")
    saved = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "run")
    assert 260 < len(saved) <= 280
    assert json.loads((tmp_path / "run" / "config.json").read_text())["vocab_size"] == len(saved)
    result = subprocess.run(
        [sys.executable, "brope_asr.py", "transcribe", "--model", str(tmp_path / "run"), rows[0]["file_name"]],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{rows[0]['file_name']}\t")


def bad_rows(folder: Path) -> list[dict]:
    """Six unusable training rows, each a kind of fault, with files written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "junk.wav").write_bytes(b"this is not audio" * 50)
    soundfile.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    soundfile.write(folder / "nan.wav", np.full(8000, np.nan, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    soundfile.write(folder / "long.flac", np.zeros(31 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    files = ["missing.flac", "junk.wav", "empty.wav", "nan.wav", "long.flac"]
    rows = [{"file_name": str(folder / name), "transcription": "one", "split": "train"} for name in files]
    good = next(DATA.glob("train/*.mp3"))
    rows.append({"file_name": str(good), "transcription": "one " * 200, "split": "train"})  # > max_target_positions
    return rows


@pytest.mark.slow
def test_bad_rows_are_skipped_with_a_warning_that_counts_and_names_them(tmp_path):
    _, rows = small_corpus(tmp_path / "data", train=6, validation=2, test=0)
    rows[-1]["transcription"] += " ?"  # a validation character the training transcripts lack
    rows.append({"file_name": rows[0]["file_name"], "transcription": "", "split": "train"})  # empty: usable
    data = write_corpus(tmp_path / "data", rows + bad_rows(tmp_path / "bad"))
    with pytest.warns(UserWarning) as caught:
        result = run_train(data, tmp_path / "run", "--test-split", "")  # 4 steps of 4: every training row is drawn
    messages = "\n".join(str(w.message) for w in caught)
    # Headers are checked before training; samples (the NaN clip) when a batch is built, once per row.
    assert "skipped 5 bad rows of 13 in the train split" in messages
    for name in ("missing.flac", "junk.wav", "empty.wav", "long.flac", "max_target_positions"):
        assert name in messages
    assert messages.count("skipped at batch time") == 1 and "nan.wav" in messages and "NaN" in messages
    assert result["skipped_at_batch_time"] == 1
    assert "1 characters in the validation split are not in the tokenizer" in messages


def local_dataset(folder: Path, layout: str, rows: list[dict]) -> Path:
    """`rows` (file_name, transcription, split) written as a local dataset in one of the layouts --dataset reads."""
    folder.mkdir(parents=True)
    if layout == "audio folder, one metadata.jsonl per split":
        for row in rows:
            (folder / row["split"]).mkdir(exist_ok=True)
            target = folder / row["split"] / Path(row["file_name"]).name
            target.write_bytes(Path(row["file_name"]).read_bytes())
            with open(folder / row["split"] / "metadata.jsonl", "a") as file:
                file.write(json.dumps({"file_name": target.name, "text": row["transcription"]}) + "\n")
        return folder
    features = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                  "text": datasets.Value("string"), "split": datasets.Value("string")})
    table = datasets.Dataset.from_dict(
        {"audio": [{"bytes": Path(row["file_name"]).read_bytes(), "path": Path(row["file_name"]).name} for row in rows],
         "text": [row["transcription"] for row in rows], "split": [row["split"] for row in rows]},
        features=features,
    ).cast_column("audio", datasets.Audio(decode=False))  # an Audio column holding the encoded files, as the hub's
    if layout == "one parquet file with a split column":
        table.to_parquet(folder / "all.parquet")
        return folder / "all.parquet"
    (folder / "data").mkdir()
    for split in sorted({row["split"] for row in rows}):  # the hub's shard names, from which datasets finds the splits
        table.filter(lambda row: row["split"] == split).remove_columns("split").to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


@pytest.mark.parametrize(
    "layout", ["audio folder, one metadata.jsonl per split", "parquet shards", "one parquet file with a split column"]
)
def test_dataset_reads_local_folders_and_files_with_the_audio_undecoded(tmp_path, layout):
    _, rows = small_corpus(tmp_path / "corpus", train=3, validation=2, test=0)
    path = local_dataset(tmp_path / "local", layout, rows)
    splits = train_hf.load_splits(train_hf.parse_args(["--dataset", str(path), "--test-split", ""]))
    assert {key: split["text"] for key, split in splits.items()} == {
        key: [row["transcription"] for row in rows if row["split"] == key] for key in ("train", "validation")
    }
    for key, split in splits.items():
        clips = [train_hf.read_clip(value, f"{key} row {i}") for i, value in enumerate(split["audio"])]
        expected = [brope_asr.load_audio(row["file_name"]) for row in rows if row["split"] == key]
        assert all(torch.equal(clip, want) for clip, want in zip(clips, expected, strict=True))


@pytest.mark.slow
def test_train_hf_trains_on_local_parquet_shards_grouped_by_length(tmp_path):
    _, rows = small_corpus(tmp_path / "corpus", train=4, validation=2, test=0)
    path = local_dataset(tmp_path / "local", "parquet shards", rows)
    result = train_hf.main(["--dataset", str(path), "--test-split", "", "--output-dir", str(tmp_path / "run"), "--group-by-length",
                            "--max-steps", "2", "--eval-steps", "2", "--batch-size", "2", "--warmup-steps", "1"])
    assert result["best_step"] == 2 and result["skipped_at_batch_time"] == 0 and 0 <= result["padding_fraction"] < 1
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_streamed_training_split_is_shuffled_checked_and_sharded(tmp_path):
    _, rows = small_corpus(tmp_path / "corpus", train=8, validation=2, test=0)
    rows.append({**rows[0], "file_name": str(tmp_path / "missing.flac")})  # a bad training row, met in the stream
    data = write_corpus(tmp_path / "data", rows)
    splits = train_hf.load_splits(train_hf.parse_args(["--data-dir", str(data), "--streaming", "--test-split", ""]))
    assert isinstance(splits["train"], datasets.IterableDataset) and splits["train"].num_shards == 9
    tokenizer = train_hf.build_tokenizer([row["transcription"] for row in rows])
    config = tiny_config(vocab_size=len(tokenizer), max_target_positions=64)
    stream, skipped = train_hf.stream_split(splits["train"], tokenizer, config, skip_bad=True, seed=0, buffer_size=4)
    with pytest.warns(UserWarning, match="missing.flac"):
        first = [row["name"] for row in stream]
    assert len(first) == 8 and len(skipped) == 1 and "missing.flac" in skipped[0]
    stream.set_epoch(1)
    with pytest.warns(UserWarning, match="missing.flac"):
        second = [row["name"] for row in stream]
    assert sorted(second) == sorted(first) and second != first  # every epoch reshuffled
    with pytest.warns(UserWarning, match="no such file"):
        shards = [[row["name"] for row in datasets.distributed.split_dataset_by_node(stream, rank, 2)] for rank in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) + len(shards[1]) == 8  # what torchrun's processes read
    with pytest.raises(ValueError, match="bad row in the train split.*missing.flac"):
        list(train_hf.stream_split(splits["train"], tokenizer, config, skip_bad=False, seed=0, buffer_size=4)[0])


@pytest.mark.slow
def test_train_hf_trains_on_a_streamed_split_and_needs_max_steps(tmp_path):
    data, _ = small_corpus(tmp_path / "data", train=4, validation=2, test=2)
    result = run_train(data, tmp_path / "run", "--streaming")
    assert result["best_step"] in (2, 4) and "test_wer" in result
    with pytest.raises(ValueError, match="--streaming needs --max-steps"):
        train_hf.main(["--data-dir", str(data), "--output-dir", str(tmp_path / "other"), "--streaming"])


def test_prepared_splits_hold_audio_undecoded_with_header_durations(tmp_path):
    data, rows = small_corpus(tmp_path / "data", train=4, validation=2, test=0)
    splits = train_hf.load_splits(train_hf.parse_args(["--data-dir", str(data)]))
    tokenizer = train_hf.build_tokenizer([row["transcription"] for row in rows])
    config = tiny_config(vocab_size=len(tokenizer), max_target_positions=64)
    prepared = train_hf.prepare_split(splits["train"], "train", tokenizer, config, skip_bad=False, decode=False)
    assert set(prepared.column_names) == {"audio", "name", "text", "labels", "seconds", "source", "speaker"}
    assert prepared["audio"] == [row["file_name"] for row in rows[:4]]  # the paths, not samples
    assert prepared["seconds"] == [soundfile.info(row["file_name"]).duration for row in rows[:4]]
    assert prepared["name"][1] == f"train row 1 ({rows[1]['file_name']})"


def test_clip_reader_decodes_once_within_its_budget_hands_out_copies_and_skips_bad_rows_once(tmp_path):
    clip = 0.1 * torch.randn(SAMPLE_RATE)
    soundfile.write(tmp_path / "a.flac", clip.numpy(), SAMPLE_RATE, subtype="PCM_24")
    soundfile.write(tmp_path / "nan.wav", np.full(800, np.nan, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    row = {"audio": str(tmp_path / "a.flac"), "name": "train row 0 (a.flac)"}
    reader = train_hf.ClipReader(cache_megabytes=4 * SAMPLE_RATE / 2**20)  # room for this one clip
    reader(row).zero_()  # augmentation writes into what it gets
    torch.testing.assert_close(reader(row), clip, rtol=0, atol=1e-6)
    assert list(reader.cache) == [row["name"]] and reader.used == 4 * SAMPLE_RATE
    torch.testing.assert_close(reader({"audio": in_memory(clip), "name": "train row 1"}), clip)
    assert list(reader.cache) == [row["name"]]  # over the budget: decoded, not kept
    bad = {"audio": str(tmp_path / "nan.wav"), "name": "train row 2 (nan.wav)"}
    with pytest.warns(UserWarning, match=r"skipped at batch time.*train row 2 \(nan.wav\).*NaN"):
        assert reader(bad) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reader(bad) is None  # counted and reported once
    assert list(reader.skipped) == [bad["name"]]
    with pytest.raises(ValueError, match=r"train row 2 \(nan.wav\)"):
        train_hf.ClipReader(skip_bad=False)(bad)


def test_bad_rows_stop_the_run_with_the_full_list_when_asked(tmp_path):
    _, rows = small_corpus(tmp_path / "data", train=4, validation=2, test=0)
    data = write_corpus(tmp_path / "data", rows + bad_rows(tmp_path / "bad"))
    with pytest.raises(ValueError, match="5 bad rows in the train split") as error:
        run_train(data, tmp_path / "run", "--on-bad-audio", "error", "--test-split", "")
    for name in ("missing.flac", "junk.wav", "empty.wav", "long.flac"):
        assert name in str(error.value)
    assert not (tmp_path / "run").exists()


def test_missing_text_column_is_named(tmp_path):
    data, rows = small_corpus(tmp_path / "data", train=2, validation=1, test=0)
    with open(data / "metadata.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["file_name", "split"])
        writer.writeheader()
        writer.writerows({"file_name": row["file_name"], "split": row["split"]} for row in rows)
    with pytest.raises(ValueError, match="no column 'transcription'"):
        run_train(data, tmp_path / "run")


def test_non_finite_loss_stops_training_naming_the_step_without_saving(tmp_path):
    data, _ = small_corpus(tmp_path / "data", train=4, validation=2, test=0)
    with pytest.raises(train_hf.NonFiniteLossError, match=r"at step \d+"):
        run_train(data, tmp_path / "run", "--learning-rate", "1e30", "--max-steps", "6", "--eval-steps", "6",
                  "--test-split", "", "--no-augment")
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics_and_a_resumed_run_reaches_them(tmp_path, monkeypatch):
    data, _ = small_corpus(tmp_path / "data", train=8, validation=2, test=2)
    whole = run_train(data, tmp_path / "whole", "--seed", "3")
    interrupted = tmp_path / "interrupted"
    again = run_train(data, interrupted, "--seed", "3")
    timing = ("runtime", "per_second", "seconds")
    assert {k: v for k, v in whole.items() if not k.endswith(timing)} == {k: v for k, v in again.items() if not k.endswith(timing)}
    assert (tmp_path / "whole" / "metrics.csv").read_text() == (interrupted / "metrics.csv").read_text()
    for path in [interrupted / "checkpoint-4", *interrupted.glob("*.safetensors"), interrupted / "metrics.csv"]:
        subprocess.run(["rm", "-rf", str(path)], check=True)  # as if killed after the step-2 checkpoint
    steps = []
    training_step = train_hf.ASRTrainer.training_step
    monkeypatch.setattr(train_hf.ASRTrainer, "training_step", lambda self, *a, **k: steps.append(1) or training_step(self, *a, **k))
    resumed = run_train(data, interrupted, "--seed", "3", "--resume")
    assert len(steps) == 2  # steps 3 and 4 only: it continued, it did not start over
    state = json.loads((interrupted / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert resumed["test_wer"] == whole["test_wer"] and resumed["test_loss"] == pytest.approx(whole["test_loss"])
    model = BRoPEASRForConditionalGeneration.from_pretrained(interrupted)
    assert model.num_parameters() > 0


def test_weight_average_follows_its_recurrence_and_swaps_back_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)  # frozen: not averaged
    average = train_hf.WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    for t in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        rate = 1 - min(0.9, (1 + t) / (10 + t))
        expected = [e + rate * (p.detach() - e) for e, p in zip(expected, (p for p in model.parameters() if p.requires_grad))]
        average.on_step_end(None, transformers.TrainerState(global_step=t), None)
    assert all(torch.allclose(a, e, atol=1e-6) for a, e in zip(average.average, expected))
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    with average.swapped():
        assert all(torch.allclose(p, e, atol=1e-6) for p, e in zip((p for p in model.parameters() if p.requires_grad), expected))
        assert torch.equal(model[1].bias, weights["1.bias"])  # the frozen one stays
        assert set(average.state_dict()) == {"0.weight", "0.bias", "1.weight"}
        assert all(torch.equal(average.state_dict()[name], weights[name]) for name in average.state_dict())
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())  # bit for bit back
    with pytest.raises(ValueError, match="decay"):
        train_hf.WeightAverage(model, decay=1.0)


@pytest.mark.slow
def test_a_weight_averaged_run_keeps_the_average_and_resumes_to_the_same_model(tmp_path):
    data, _ = small_corpus(tmp_path / "data", train=8, validation=2, test=2)
    whole = run_train(data, tmp_path / "whole", "--seed", "3", "--ema-decay", "0.5")
    plain = run_train(data, tmp_path / "plain", "--seed", "3")
    checkpoint = tmp_path / "whole" / f"checkpoint-{whole['best_step']}"
    averaged = BRoPEASRForConditionalGeneration.from_pretrained(checkpoint).state_dict()
    own = torch.load(checkpoint / train_hf.TRAINING_WEIGHTS, weights_only=True)
    plain_weights = BRoPEASRForConditionalGeneration.from_pretrained(tmp_path / "plain" / f"checkpoint-{whole['best_step']}").state_dict()
    assert all(torch.equal(own[name], plain_weights[name]) for name in own)  # averaging never changes the training itself
    assert any(not torch.equal(own[name], averaged[name]) for name in own)  # the checkpoint's model is the average
    kept = BRoPEASRForConditionalGeneration.from_pretrained(tmp_path / "whole").state_dict()
    assert all(torch.equal(kept[name], averaged[name]) for name in averaged)  # the best average is the model kept and tested
    interrupted = tmp_path / "interrupted"
    run_train(data, interrupted, "--seed", "3", "--ema-decay", "0.5")
    for path in [interrupted / "checkpoint-4", *interrupted.glob("*.safetensors")]:
        subprocess.run(["rm", "-rf", str(path)], check=True)  # as if killed after the step-2 checkpoint
    resumed = run_train(data, interrupted, "--seed", "3", "--ema-decay", "0.5", "--resume")
    assert resumed["test_wer"] == whole["test_wer"] and resumed["test_loss"] == pytest.approx(whole["test_loss"])
    final = BRoPEASRForConditionalGeneration.from_pretrained(interrupted).state_dict()
    assert all(torch.allclose(final[name], kept[name], atol=1e-6) for name in kept)
    with pytest.raises(ValueError, match="without --ema-decay"):
        run_train(data, tmp_path / "plain", "--seed", "3", "--ema-decay", "0.5", "--resume")
    with pytest.raises(ValueError, match="--ema-decay"):
        run_train(data, tmp_path / "bad", "--ema-decay", "1")


# Every pair of two toggles' values, in 6 runs instead of all 12 combinations (each costs two processes'
# start-up): an option that DDP trips on (an unused parameter, a rank-dependent branch) shows in any of its runs.
TORCHRUN_TOGGLES = [
    ("spectrogram", "--no-betweenness", "--no-blend-attention"),
    ("spectrogram", "--betweenness", "--blend-attention"),
    ("waveform", "--no-betweenness", "--blend-attention"),
    ("waveform", "--betweenness", "--no-blend-attention"),
    ("both", "--no-betweenness", "--no-blend-attention"),
    ("both", "--betweenness", "--blend-attention"),
]


def test_torchrun_toggles_cover_every_pair_of_option_values():
    values = [INPUT_MODES, ("--no-betweenness", "--betweenness"), ("--no-blend-attention", "--blend-attention")]
    for i, j in itertools.combinations(range(3), 2):
        assert {(row[i], row[j]) for row in TORCHRUN_TOGGLES} == set(itertools.product(values[i], values[j]))


@pytest.mark.slow
@pytest.mark.parametrize("input_mode, betweenness, blend", TORCHRUN_TOGGLES)
def test_two_process_torchrun_trains_and_saves_a_loadable_model(tmp_path, input_mode, betweenness, blend):
    toggles = ["--input-mode", input_mode, betweenness, blend, "--ctc-weight", "0.3" if input_mode == "both" else "0"]
    data, _ = small_corpus(tmp_path / "data", train=8, validation=2, test=2)
    output = tmp_path / "run"
    # --standalone: the rendezvous binds a free port itself (a probed port could be taken before torchrun binds it)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "train_hf.py", "--data-dir", str(data), "--output-dir", str(output), "--max-steps", "2",
               "--eval-steps", "2", "--batch-size", "2", "--num-beams", "1", *toggles]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]  # no exit abort: no retry
    assert [line for line in result.stdout.splitlines() if line.startswith("test WER")] == [
        result.stdout.strip().splitlines()[-1]
    ], result.stdout[-3000:]  # one process reports, the other trains alongside it
    model = BRoPEASRForConditionalGeneration.from_pretrained(output)
    assert model.config.input_mode == toggles[1]


@pytest.mark.slow
def test_two_process_torchrun_streams_a_local_parquet_dataset_and_each_process_reads_its_own_rows(tmp_path):
    _, rows = small_corpus(tmp_path / "corpus", train=16, validation=2, test=2)
    path = local_dataset(tmp_path / "local", "parquet shards", rows)  # train, validation and test shards, as the hub's
    launcher = tmp_path / "launch.py"  # train_hf as its command line runs, each process noting the training rows it reads
    launcher.write_text(f"""import os, sys
sys.path.insert(0, {str(REPO)!r})
import train_hf
collate = train_hf.Collator.__call__
def noting(self, rows):
    with open({str(tmp_path)!r} + f"/rows_{{os.environ['RANK']}}.txt", "a") as file:
        file.writelines(row["name"] + "\\n" for row in rows if row.get("augment"))
    return collate(self, rows)
train_hf.Collator.__call__ = noting
train_hf.run_as_script(sys.argv[1:])
""")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher),
               "--dataset", str(path), "--streaming", "--shuffle-buffer", "4", "--output-dir", str(tmp_path / "run"),
               "--max-steps", "3", "--eval-steps", "3", "--batch-size", "2", "--num-beams", "1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    read = [set((tmp_path / f"rows_{rank}.txt").read_text().split("\n")) - {""} for rank in (0, 1)]
    assert read[0] and read[1] and not read[0] & read[1], read  # each process streams its own shards of the split
    assert result.stdout.strip().splitlines()[-1].startswith("test WER") and "on 2 clips" in result.stdout.strip().splitlines()[-1]
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.slow
def test_ablation_grid_trains_each_run_once_and_writes_its_table(tmp_path, monkeypatch):
    from tools import ablate

    data, _ = small_corpus(tmp_path / "data", train=16, validation=4, test=4)
    grid = tmp_path / "grid"
    argv = ["--modes", "spectrogram", "--betweenness", "off", "on", "--blend", "off", "--seeds", "1",
            "--max-steps", "2", "--output-dir", str(grid), "--", "--data-dir", str(data), "--batch-size", "4", "--num-beams", "1"]
    names = ["spectrogram_betweenness-off_blend-off", "spectrogram_betweenness-on_blend-off"]

    rows = ablate.main(argv)
    assert [(row["cell"], row["runs"], row["failed"]) for row in rows] == [(name, 1, 0) for name in names]
    assert all(name in (grid / "ablation.md").read_text() for name in names)
    with open(grid / "ablation.csv", newline="") as file:
        assert [row["cell"] for row in csv.DictReader(file)] == names
    results = [grid / name / "seed0" / "result.json" for name in names]
    assert "betweenness_gate" not in json.loads(results[0].read_text())
    assert "betweenness_gate" in json.loads(results[1].read_text())
    first = json.loads(results[0].read_text())
    assert 0 < first["train_seconds"] < first["seconds"]  # training is timed apart from the whole run
    written = [path.stat().st_mtime_ns for path in results]

    def train_again(argv):
        raise AssertionError(f"a finished run was trained again: {argv}")

    monkeypatch.setattr(ablate.train_hf, "main", train_again)
    rerun = ablate.main(argv)  # a retrained run would fail in train_again and count as failed
    assert [(row["cell"], row["runs"], row["failed"]) for row in rerun] == [(name, 1, 0) for name in names]
    assert [path.stat().st_mtime_ns for path in results] == written


def test_ablation_effects_pair_runs_on_seed_and_the_other_switches():
    from tools import ablate

    def runs(*wers):
        return [None if wer is None else {"test_wer": wer} for wer in wers]  # None: a failed run

    off, on = ablate.Cell("spectrogram", False, False), ablate.Cell("spectrogram", True, False)
    wave_off, wave_on = ablate.Cell("waveform", False, False), ablate.Cell("waveform", True, False)
    results = {off: runs(0.50, 0.60, 0.40), on: runs(0.30, 0.40, 0.20),
               wave_off: runs(0.70, 0.70, None), wave_on: runs(0.52, 0.48, 0.18)}
    lines = ablate.effects(results)
    t_975_4 = 2.776  # Student's t, 4 degrees of freedom (5 pairs), two-sided 95%
    # betweenness: on - off per seed = -20, -20, -20 (spectrogram), -18, -22 (waveform; seed 2 failed off)
    differences = [-20, -20, -20, -18, -22]
    error = statistics.stdev(differences) / math.sqrt(5)
    assert lines[0] == (f"- betweenness on - off: WER -20.00 points over 5 paired runs (standard error {error:.2f}, "
                        f"95% bound ±{t_975_4 * error:.2f}): larger than the seed-to-seed spread; "
                        "a 2-point effect needs 6 pairs to be told from noise at 95% with 80% power")
    # waveform - spectrogram: +20, +10, failed (betweenness off); +22, +8, -2 (on): mean 11.6, SE 4.35, bound 12.1
    differences = [20, 10, 22, 8, -2]
    error = statistics.stdev(differences) / math.sqrt(5)
    assert 2 * error < 11.6 < t_975_4 * error  # "two standard errors" would call this an effect; t does not
    assert lines[1] == (f"- waveform - spectrogram input: WER +11.60 points over 5 paired runs (standard error "
                        f"{error:.2f}, 95% bound ±{t_975_4 * error:.2f}): within the seed-to-seed spread; "
                        f"a 2-point effect needs {ablate.pairs_needed(statistics.stdev(differences), 2.0)} pairs to be told "
                        "from noise at 95% with 80% power")
    assert len(lines) == 2  # no cell with blended attention or "both" input: those contrasts have no pairs


def test_long_string_scores_are_the_wer_of_whole_clip_decodes_overall_and_by_length(overfit_model, tmp_path, monkeypatch):
    from tools import ablate

    model, tokenizer, paths, texts, waveforms, _ = overfit_model
    run = save_run(model, tokenizer, tmp_path / "run")
    long_dir = tmp_path / "long"
    long_dir.mkdir()
    # References with words added to some, so the rates are not all 0 and the buckets differ.
    references = [texts[0], texts[1] + " zero zero zero", texts[2], texts[3] + " one two three four"]
    with open(long_dir / "metadata.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("file_name", "transcription"))
        for path, reference in zip(paths, references):
            (long_dir / path.name).write_bytes(path.read_bytes())
            writer.writerow((path.name, reference))
    monkeypatch.setattr(ablate, "LONG_BUCKETS", ((1, 2), (3, 5), (6, 9)))
    hypotheses = brope_asr.transcribe(model, tokenizer, waveforms)  # every clip is one window: a whole-clip decode
    scores = ablate.long_string_wers(run, long_dir)
    assert scores["long_wer"] == pytest.approx(brope_asr.word_error_rate(hypotheses, references)) and scores["long_wer"] > 0
    for low, high in ablate.LONG_BUCKETS:
        chosen = [i for i, reference in enumerate(references) if low <= len(reference.split()) <= high]
        if chosen:
            assert scores[f"long_wer_{low}_{high}"] == pytest.approx(
                brope_asr.word_error_rate([hypotheses[i] for i in chosen], [references[i] for i in chosen]))
        else:
            assert f"long_wer_{low}_{high}" not in scores
    (row,) = ablate.main(["--long", str(long_dir), "--score-long", str(run)])  # trains nothing
    assert row == {"run": str(run), **scores}
    greedy = brope_asr.transcribe(model, tokenizer, waveforms, num_beams=1)
    beams, generate = [], BRoPEASRForConditionalGeneration.generate
    spy = lambda self, *a, **kw: beams.append(kw.get("num_beams")) or generate(self, *a, **kw)  # noqa: E731
    monkeypatch.setattr(BRoPEASRForConditionalGeneration, "generate", spy)
    (row,) = ablate.main(["--long", str(long_dir), "--score-long", str(run), "--num-beams", "1"])
    assert row["long_wer"] == pytest.approx(brope_asr.word_error_rate(greedy, references)) and beams and set(beams) == {1}
    with pytest.raises(ValueError, match="--long"):
        ablate.main(["--score-long", str(run)])


def test_pairs_needed_is_the_least_count_whose_paired_test_finds_the_difference():
    from tools import ablate

    # std 1.414 (the differences -20, -20, -20, -18, -22): (t(0.975, n - 1) + 0.8416) 1.414 / sqrt(n) <= 2
    # first holds at n = 6 ((2.571 + 0.842) 1.414 / 2.449 = 1.97; n = 5 gives 2.29).
    assert ablate.pairs_needed(statistics.stdev([-20, -20, -20, -18, -22]), 2.0) == 6
    # std = difference: the normal approximation says (1.96 + 0.84)^2 = 7.8 pairs; t's heavier tails need 10.
    assert ablate.pairs_needed(2.0, 2.0) == 10
    assert ablate.pairs_needed(1.0, 2.0) < ablate.pairs_needed(2.0, 2.0) < ablate.pairs_needed(4.0, 2.0)


def test_prereg_analysis_pairs_finished_runs_by_seed_and_bounds_the_mean_difference(tmp_path):
    from tools import prereg

    def log(wer: float, validation: list[float], gate: str = "") -> str:
        bar = "100%|##| 7/7 [00:01<00:00,  5.88it/s]\x1b[A"  # as in real logs, rows after the first follow a progress bar
        table = "\n".join(f"{bar if k > 1 else ''}{100 * k:>10} | 1.0000 | 0.5000 | {v:.4f} | 0.0100"
                          for k, v in enumerate(validation, 1))
        return (f"clips: x\n  0%| | 0/2000\r 50%| | 1000/2000\n      step | train_loss | eval_loss | wer | cer\n{table}\n"
                f"learned mixes: {{{gate}}}; training time 600 s; best validation WER at step 200\n"
                f"test fsdd: WER {wer + 5:.2f}% (CER 9.00%) on 200 clips\ntest WER {wer:.2f}% (CER 4.00%) on 600 clips\nWALL 650 s rc=0\n")

    for seed, (rope, brope) in zip((10, 11, 12), ((10.0, 8.0), (12.0, 11.0), (11.0, 8.0))):
        (tmp_path / f"rope_s{seed}.log").write_text(log(rope, [0.09, 0.05, 0.07]))
        (tmp_path / f"brope_s{seed}.log").write_text(log(brope, [0.08, 0.04], "'betweenness_gate': 0.05"))
    (tmp_path / "rope_s13.log").write_text(log(9.0, [0.05]))  # its pair has not finished: left out
    (tmp_path / "brope_s13.log").write_text("clips: x\n")
    (tmp_path / "long_rope_s10.log").write_text("runs/prereg/rope_s10: long_wer 40.00%\n")
    (tmp_path / "long_brope_s10.log").write_text("runs/prereg/brope_s10: long_wer 45.00%, long_8_10 30.00%\n")
    run = prereg.read_log(tmp_path / "brope_s10.log")
    assert run == {"test": 8.0, "test fsdd": 13.0, "best validation": 4.0, "betweenness_gate": 0.05, "training time": 600.0, "wall": 650.0}
    assert prereg.read_log(tmp_path / "brope_s13.log") is None
    report = prereg.analyze(tmp_path)
    assert "seeds 10, 11, 12)" in report and "seed 13" not in report
    # Differences -2, -1, -3: mean -2, sd 1, bound t(0.975, 2) / sqrt(3) = 4.303 / 1.732 = 2.48.
    assert "- test (**primary**): -2.00, -1.00, -3.00; mean -2.00 ± 2.48 (95%, t = -3.46 on 2 df" in report
    (primary,) = [line for line in report.splitlines() if "(**primary**)" in line]
    assert primary.endswith("the interval includes 0")
    assert "| 40.00 |" in report and "| 45.00 |" in report  # the long strings join their runs
    # The blended-attention test pairs its arm with the same plain runs, and leaves bRoPE's runs out.
    (tmp_path / "blend_s11.log").write_text(log(14.5, [0.06], "'attention_blend': 0.52"))
    blend = prereg.analyze(tmp_path, "blend")
    assert "Pairs finished: 1 (seeds 11). blended attention − RoPE" in blend and "brope" not in blend
    assert "- test (**primary**): +2.50; mean +2.50 (one pair: no test)" in blend and "| 0.520 |" in blend
    # The combined arm's runs (brope_blend_s*) are neither bRoPE's nor blended attention's.
    (tmp_path / "brope_blend_s12.log").write_text(log(7.0, [0.03], "'attention_blend': 0.55, 'betweenness_gate': 0.02"))
    (tmp_path / "long_brope_blend_s12.log").write_text("runs/prereg/brope_blend_s12: long_wer 50.00%\n")
    both = prereg.analyze(tmp_path, "brope_blend")
    assert "Pairs finished: 1 (seeds 12). bRoPE with blended attention − RoPE" in both and "| 50.00 |" in both
    assert "- test (**primary**): -4.00; mean -4.00 (one pair: no test)" in both
    assert prereg.analyze(tmp_path) == report and prereg.analyze(tmp_path, "blend") == blend
    # One seed a row: RoPE / treatment per cell, the mixes, the whole run, then mean ± std (blanks for the mixes).
    table = prereg.by_seed(tmp_path).splitlines()
    assert table[0] == "| seed | test WER, RoPE / bRoPE | lucas | best validation | gate | whole run (s) |"
    assert table[2] == "| 10 | 10.00 / 8.00 | 15.00 / 13.00 | 5.00 / 4.00 | +0.050 | 650 / 650 |"
    assert table[-1] == "| mean ± std of 3 | 11.00 ± 1.00 / 9.00 ± 1.73 | 16.00 ± 1.00 / 14.00 ± 1.73 | 5.00 ± 0.00 / 4.00 ± 0.00 | | 650 ± 0 / 650 ± 0 |"
    assert len(table) == 2 + 3 + 1 and prereg.by_seed(tmp_path, "brope_blend").splitlines()[2].startswith("| 12 | 11.00 / 7.00 |")


def test_silent_clip_gives_finite_features_and_decodes(overfit_model):
    model, tokenizer, *_ = overfit_model
    silence = torch.zeros(SAMPLE_RATE)
    features = brope_asr.log_mel_spectrogram(silence)
    assert bool(torch.isfinite(features).all())
    assert isinstance(brope_asr.transcribe(model, tokenizer, [silence])[0], str)


@pytest.mark.slow
def test_benchmark_quick_run_prints_one_table_with_every_row():
    result = subprocess.run(
        [sys.executable, "-m", "tools.bench_brope_asr", "--quick", "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| # | row |")
    assert {line.split("|")[1].strip() for line in table[2:]} == {"1", "2", "3", "4", "5", "6", "7"}
    assert ("malloc: keep_freed_memory, as train_hf.py" in result.stdout) == (brope_asr._glibc() is not None)
    # Every option adds model FLOPs, and all of them together add the most: off / on below 1, lowest for all.
    flops = {line.split("|")[2].split(": ")[1].split(" vs off")[0]: float(line.split("|")[5])
             for line in table if "model FLOPs per step" in line and "Whisper" not in line}
    assert set(flops) == {"all options on", "input both", "bRoPE", "blended attention"}
    assert all(0 < ratio < 1 for ratio in flops.values()) and flops["all options on"] == min(flops.values())
    assert any("model FLOPs per step" in line and "Whisper cut to 3 s" in line and float(line.split("|")[5]) > 0 for line in table)


@pytest.mark.parametrize("first, eager, compiled, steps", [
    (10.0, 0.05, 0.04, 995.0),  # 9.95 s more than an eager step, 10 ms saved by each later one
    (10.0, 0.05, 0.05, math.inf),  # no faster: never
    (10.0, 0.05, 0.06, math.inf),  # slower: never
])
def test_compile_pays_back_after_its_extra_first_step_over_the_time_each_later_step_saves(first, eager, compiled, steps):
    from tools import bench_brope_asr as bench

    assert bench.payback_steps(first, eager, compiled) == pytest.approx(steps)


def test_benchmark_rows_option_measures_only_the_rows_asked_for():
    from tools import bench_brope_asr as bench

    rows = bench.measure_all(bench.Runner(torch.device("cpu"), 1), bench.QUICK, {6})
    assert {row.section for row in rows} == {6} and len(rows) == 5 * len(bench.QUICK.presets)
    assert all(row.ratio > 0 for row in rows)


@pytest.mark.parametrize("ratio, target, text, met", [
    (0.998, 1.0, "0.998", "**no**"),  # a miss never reads as its target
    (0.4996, 0.5, "0.4996", "**no**"),
    (1.004, 1.0, "1.00", "yes"),
    (0.9949, 1.0, "0.99", "**no**"),
    (0.8512, None, "0.85", ""),
])
def test_a_bench_ratio_shows_the_digits_that_tell_a_miss_from_its_target(ratio, target, text, met):
    from tools import bench_brope_asr as bench

    row = bench.Row(1, "row", "ours", "anchor", ratio, target)
    assert (row.ratio_text(), row.met()) == (text, met)
    assert f"| {text} |" in bench.render([row], [])


def test_padding_report_gives_a_share_for_every_batching_with_and_without_joined_words(tmp_path):
    from tools import bench_brope_asr as bench

    folder, _ = small_corpus(tmp_path / "data", train=16)
    report = bench.padding_report(str(folder), batch_size=4, epochs=1)
    rows = [line.split("|")[1:-1] for line in report.splitlines() if line.startswith("| ") and "%" in line]
    assert [(name.strip(), float(join)) for name, join, *_ in rows] == [
        (name, join) for join in (0.0, 0.6) for name in ("random", "grouped by length", "planned, 4 batches sorted together (--sorted-batches 4)")
    ]
    for _, _, padded, processed in rows:
        assert 0 <= float(processed.strip(" %")) <= float(padded.strip(" %")) < 100  # micro-batches never add padding


def test_level_report_describes_each_source_and_never_reads_the_test_split(tmp_path):
    from tools import bench_brope_asr as bench

    table = [row for row in read_metadata() if row["split"] != "test"]
    groups = ([r for r in table if r["source"] == "espeak-ng"][:3], [r for r in table if r["speaker"] == "jackson"][:3],
              [r for r in table if r["speaker"] == "yweweler"][:3])
    rows = [{**row, "file_name": str(DATA / row["file_name"])} for group in groups for row in group]
    rows.append({**rows[0], "split": "test", "file_name": str(tmp_path / "missing.wav")})  # reading it would fail
    report = bench.level_report(str(write_corpus(tmp_path / "data", rows)), clips=3)
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip().endswith(")")]
    assert [name for name, *_ in cells] == ["espeak-ng (3)", "real people (3)", "yweweler (3)"]
    for _, std, floor, spread in cells:
        under = [float(value) for value in spread.split(" / ")]
        assert float(std) > 0 and 0 <= float(floor.strip("%")) <= 100 and -80 <= under[0] <= under[1] <= under[2] <= under[3] <= 0
    assert float(cells[0][2].strip("%")) > float(cells[1][2].strip("%"))  # synthetic silence sits at the floor, a room's does not


def test_speed_perturbation_never_lengthens_a_clip_past_max_source_positions():
    torch.manual_seed(0)
    config = tiny_config(max_source_positions=100)
    collate = train_hf.Collator(config)
    row = {"audio": in_memory(random_clips(100 * 160)[0]), "labels": [5, 2], "augment": True}
    frames = {collate([row])["attention_mask"].shape[1] for _ in range(20)}  # all three speeds get drawn
    assert max(frames) == 100 and min(frames) < 100


def test_compile_flag_reaches_the_training_arguments_and_is_off_by_default(tmp_path):
    for flags, compiled in (([], False), (["--compile"], True)):
        args = train_hf.parse_args(["--output-dir", str(tmp_path), "--max-steps", "10", *flags])
        assert train_hf.training_arguments(args, max_label=8).torch_compile is compiled


def test_weight_decay_flag_reaches_the_training_arguments(tmp_path):
    for flags, decay in (([], 0.01), (["--weight-decay", "0.1"], 0.1)):
        args = train_hf.parse_args(["--output-dir", str(tmp_path), "--max-steps", "10", *flags])
        assert train_hf.training_arguments(args, max_label=8).weight_decay == decay


def test_model_flags_reach_the_config_and_unset_ones_keep_the_preset():
    tokenizer = train_hf.build_tokenizer(["one two"])
    preset = BRoPEASRConfig.from_preset("small")
    default = train_hf.make_config(train_hf.parse_args([]), tokenizer)
    fields = list(train_hf.PRESET_FLAGS.values())
    assert [getattr(default, field) for field in fields] == [getattr(preset, field) for field in fields]
    flags = {  # each flag set to a value its preset does not have
        "--ctc-weight": ("0.5", 0.5), "--ctc-rescoring-weight": ("0.7", 0.7), "--ctc-outputs-per-frame": ("2", 2),
        "--downsampling-factor": ("2", 2), "--dropout": ("0.2", 0.2), "--label-smoothing": ("0.1", 0.1),
        "--encoder-layers": ("5", 5), "--decoder-layers": ("1", 1), "--no-absolute-positions": (None, False),
        "--no-normalize-features": (None, False), "--spectrogram-floor-db": ("70", 70.0), "--spectrogram-max-hz": ("3000", 3000.0),
        "--betweenness-max-shift": ("8", 8.0), "--betweenness-gate-init": ("0.5", 0.5),
    }
    argv = [part for flag, (value, _) in flags.items() for part in (flag, value) if part is not None]
    config = train_hf.make_config(train_hf.parse_args(argv), tokenizer)
    expected = [want for _, want in flags.values()]
    names = [train_hf.PRESET_FLAGS[flag.removeprefix("--no-").removeprefix("--").replace("-", "_")] for flag in flags]
    assert [getattr(config, field) for field in names] == expected
    assert len(set(names)) == len(train_hf.PRESET_FLAGS) - 1  # every flag but --normalize-variance, which needs the mean
    variance = train_hf.make_config(train_hf.parse_args(["--normalize-variance"]), tokenizer)
    assert variance.normalize_feature_variance and not preset.normalize_feature_variance
    zeros = train_hf.make_config(train_hf.parse_args(["--spectrogram-floor-db", "0", "--spectrogram-max-hz", "0"]), tokenizer)
    assert zeros.spectrogram_floor_db is None and zeros.spectrogram_max_hz is None  # 0: Whisper's 80 dB and all bins


# ----------------------------------- train_hf.py and the corpus: splits, joined words, augmentation, non-speech


def test_shipped_splits_share_no_speaker_and_no_voice_variant():
    rows = read_metadata()
    speakers = {split: {row["speaker"] for row in rows if row["split"] == split} for split in ("train", "validation", "test")}
    assert all(speakers.values())
    assert not speakers["train"] & speakers["validation"] - {row["speaker"] for row in rows if row["source"] == "fsdd"}
    assert not speakers["train"] & speakers["test"] and not speakers["validation"] & speakers["test"]
    variants = {split: {s.split("+")[1] for s in names if "+" in s} for split, names in speakers.items()}
    assert not variants["train"] & variants["validation"] and not variants["train"] & variants["test"]
    assert not variants["validation"] & variants["test"]
    fsdd = {split: {row["speaker"] for row in rows if row["split"] == split and row["source"] == "fsdd"} for split in speakers}
    assert len(fsdd["test"]) == 1 and len(fsdd["train"]) == 3 and fsdd["validation"] <= fsdd["train"]
    held_out = next(iter(fsdd["test"]))
    assert sum(row["speaker"] == held_out for row in rows) == 500  # every recording of that person, all in test
    assert {row["source"] for row in rows} == {"espeak-ng", "fsdd", "mbrola", "pico"}  # never flite or festival


def test_shipped_other_synthesizers_voices_are_each_in_one_split_as_the_corpus_tool_says():
    from tools import make_corpus
    rows = read_metadata()
    other = {split: {row["speaker"] for row in rows if row["split"] == split and row["source"] in ("mbrola", "pico")}
             for split in ("train", "validation", "test")}
    assert other["train"] == set(make_corpus.OTHER_SPLIT_VOICES["train"])
    assert other["validation"] == set(make_corpus.OTHER_SPLIT_VOICES["validation"]) and not other["test"]
    assert not other["train"] & other["validation"]
    assert "mb-de4-en" not in {name for _, name in make_corpus.OTHER_VOICES.values()}  # its licence restricts its use
    for row in rows:
        if row["source"] in ("mbrola", "pico"):
            assert make_corpus.OTHER_VOICES[row["speaker"]][0] == row["source"], row


def test_corpus_tool_draws_other_synthesizer_utterances_reproducibly_within_each_engines_ranges():
    from tools import make_corpus
    voices = make_corpus.OTHER_SPLIT_VOICES["train"]
    draw = make_corpus.draw_other_utterances(np.random.default_rng([0, 4]), 300, voices)
    assert draw == make_corpus.draw_other_utterances(np.random.default_rng([0, 4]), 300, voices)
    ranges = {"mbrola": (make_corpus.MBROLA_SPEED_WPM, make_corpus.MBROLA_PITCH), "pico": (make_corpus.PICO_SPEED, make_corpus.PICO_PITCH)}
    for text, voice, speed, pitch, voice_speed in draw:
        (speed_range, pitch_range) = ranges[make_corpus.OTHER_VOICES[voice][0]]
        assert voice in voices and 1 <= len(text.split()) <= 7 and set(text.split()) <= set(make_corpus.DIGIT_WORDS)
        assert speed_range[0] <= speed <= speed_range[1] and pitch_range[0] <= pitch <= pitch_range[1]
        assert make_corpus.VOICE_SPEED[0] <= voice_speed <= make_corpus.VOICE_SPEED[1]
    assert {voice for _, voice, *_ in draw} == set(voices)


def test_shipped_mp3_training_clips_decode_to_speech_and_measuring_clips_are_flac():
    rows = read_metadata()
    assert {Path(row["file_name"]).suffix for row in rows if row["split"] != "train"} == {".flac"}  # measured on exact audio
    assert {Path(row["file_name"]).suffix for row in rows if row["split"] == "train"} == {".mp3"}
    rates = {"espeak-ng": SAMPLE_RATE, "fsdd": 8000, "mbrola": 8000, "pico": 8000}  # the others in the telephone band
    for row in rows[::50]:
        samples, sampling_rate = soundfile.read(DATA / row["file_name"], dtype="float32")
        assert sampling_rate == rates[row["source"]] and np.isfinite(samples).all()
        assert 0.2 < len(samples) / sampling_rate < 10 and np.sqrt(np.mean(samples**2)) > 1e-3, row["file_name"]


def test_data_folder_fits_its_30_mb_budget():
    assert sum(path.stat().st_size for path in DATA.rglob("*") if path.is_file()) <= 30_000_000


def test_join_words_transcript_is_the_words_joined_and_audio_holds_every_clip_and_pause():
    generator = torch.Generator().manual_seed(0)
    clips = [0.1 * torch.randn(n, generator=generator) for n in (3000, 5000, 4000)]
    waveform, text = train_hf.join_words(clips, ["one", "two", "three"], [0.1, 0.2], torch.Generator().manual_seed(1))
    assert text == "one two three"
    assert len(waveform) == 3000 + 1600 + 5000 + 3200 + 4000
    assert torch.equal(waveform[:3000], clips[0]) and torch.equal(waveform[4600:9600], clips[1]) and torch.equal(waveform[-4000:], clips[2])
    assert 0 < waveform[3000:4600].abs().max() < clips[0].abs().max()  # the pause continues a noise floor, not digital zero
    again, _ = train_hf.join_words(clips, ["one", "two", "three"], [0.1, 0.2], torch.Generator().manual_seed(1))
    assert torch.equal(waveform, again)
    with pytest.raises(ValueError, match="3 words need 2 pauses, got 1"):
        train_hf.join_words(clips, ["one", "two", "three"], [0.1])


def planned_rows(count: int = 200, seed: int = 0) -> tuple[list[dict], dict[str, list[dict]]]:
    """Rows as PlannedBatches sees them (speaker, text, seconds): one-word rows of a speaker with a pool, and strings."""
    generator = torch.Generator().manual_seed(seed)
    rows = [{"speaker": "ann", "text": "one", "labels": [0] * 4, "seconds": 0.2 + 0.4 * float(torch.rand((), generator=generator))}
            if i % 2 else {"speaker": "v1", "text": "one two three", "labels": [0] * 14,
                           "seconds": 0.5 + 3.0 * float(torch.rand((), generator=generator))}
            for i in range(count)]
    return rows, {"ann": [row for row in rows if row["speaker"] == "ann"]}


PLAN_TOKENIZER = train_hf.build_tokenizer(["one two three"])


def test_planned_batches_cover_every_row_once_per_epoch_in_batches_of_like_length():
    rows, pools = planned_rows(203)
    sampler = train_hf.PlannedBatches(rows, pools, PLAN_TOKENIZER, 0.6, 0.1, batch_size=8, sorted_batches=4, seed=0)
    items = list(sampler)
    assert sorted(index for index, _ in items) == list(range(203)) and len(sampler) == 203
    kinds = {plan.kind for _, plan in items}
    assert kinds == {"row", "joined", "non_speech"}
    assert all(rows[i]["speaker"] == "ann" and " " not in rows[i]["text"] for i, plan in items if plan.kind == "joined")
    assert all(plan.seconds == rows[i]["seconds"] for i, plan in items if plan.kind == "row")
    assert all(plan.tokens == {"row": len(rows[i]["labels"]), "non_speech": 1}.get(plan.kind, 4 * len(plan.words)) for i, plan in items)
    for start in range(0, 192, 32):  # a batch's loss scale is its tokens over the mean tokens of its window's batches
        window = [items[start + k : start + k + 8] for k in range(0, 32, 8)]
        tokens = [sum(plan.tokens for _, plan in batch) for batch in window]
        for batch, count in zip(window, tokens):
            assert all(plan.loss_scale == pytest.approx(4 * count / sum(tokens)) for _, plan in batch)
    for start in range(0, 192, 32):  # each window of 4 batches: every batch is a run of the window's examples sorted by duration
        window = items[start : start + 32]
        batches = sorted((sorted(plan.seconds for _, plan in window[k : k + 8]) for k in range(0, 32, 8)), key=lambda b: b[0])
        assert [s for batch in batches for s in batch] == sorted(plan.seconds for _, plan in window)
    assert list(sampler) == items  # the same seed and epoch give the same batches
    sampler.set_epoch(1)
    assert list(sampler) != items
    random_padding, sorted_padding = (
        statistics.mean(1 - statistics.mean(b) / max(b) for b in (
            [plan.seconds for _, plan in list(train_hf.PlannedBatches(rows, pools, PLAN_TOKENIZER, 0.6, 0.1, 8, k, 0))[s : s + 8]] for s in range(0, 200, 8)))
        for k in (1, 4))
    assert sorted_padding < 0.6 * random_padding
    with pytest.raises(ValueError, match="sorted_batches must be >= 1"):
        train_hf.PlannedBatches(rows, pools, PLAN_TOKENIZER, 0.6, 0.1, 8, 0, 0)


def test_source_repeats_draw_a_source_that_many_times_an_epoch():
    rows, pools = planned_rows(40)
    rows = [{**row, "source": "real" if row["speaker"] == "ann" else "synthetic"} for row in rows]
    sampler = train_hf.PlannedBatches(rows, pools, PLAN_TOKENIZER, 0.6, 0.1, 8, 4, 0, repeats=train_hf.parse_repeats("real=3"))
    counts = Counter(index for index, _ in sampler)
    assert len(sampler) == 20 * 3 + 20 and all(counts[i] == (3 if rows[i]["source"] == "real" else 1) for i in range(40))
    assert train_hf.parse_repeats("") == {} and train_hf.parse_repeats("a=2, b=1") == {"a": 2, "b": 1}
    for bad in ("a", "a=0", "=2", "a=x"):
        with pytest.raises(argparse.ArgumentTypeError, match="SOURCE=N"):
            train_hf.parse_repeats(bad)


def test_default_source_repeats_name_sources_of_the_shipped_training_split_and_a_named_unknown_source_is_an_error():
    shipped = {row["source"] for row in read_metadata() if row["split"] == "train"}
    assert set(train_hf.DEFAULT_SOURCE_REPEATS) <= shipped  # a misspelt default would silently repeat nothing
    rows, pools = planned_rows(40)
    rows = [{**row, "source": "real" if row["speaker"] == "ann" else "synthetic"} for row in rows]
    train = datasets.Dataset.from_list(rows)
    args = train_hf.parse_args(["--source-repeats", "real=2,mbrolla=2"])
    with pytest.raises(ValueError, match="does not have: mbrolla .*it has: real, synthetic"):
        train_hf.plan_batches(args, train, pools, PLAN_TOKENIZER)
    default = train_hf.plan_batches(train_hf.parse_args([]), train, pools, PLAN_TOKENIZER)  # no fsdd here: once each
    assert len(default) == 40 and default.repeats == {}
    named = train_hf.plan_batches(train_hf.parse_args(["--source-repeats", "real=2"]), train, pools, PLAN_TOKENIZER)
    assert len(named) == 60 and named.repeats == {"real": 2}


def test_default_augmentation_is_vtlp_on_the_synthetic_rows_and_named_sources_must_exist():
    shipped = {row["source"] for row in read_metadata() if row["split"] == "train"}
    assert set(train_hf.DEFAULT_AUGMENT_SOURCES) <= shipped  # a misspelt default would vary nothing
    train = datasets.Dataset.from_list([{"source": source} for source in ("espeak-ng", "mbrola", "fsdd")])
    plan = lambda *flags, split=train: train_hf.augmentation_plan(train_hf.parse_args(list(flags)), split)
    assert plan() == (("vtlp",), ("espeak-ng", "mbrola"))  # the default, on the default's sources this split has
    assert plan(split=datasets.Dataset.from_list([{"source": "real"}])) == ((), ())  # none of them: nothing varied
    assert plan("--augment", "gain,vtlp") == (("gain", "vtlp"), ())  # named augmentations vary every source
    assert plan("--augment", "none") == plan("--no-augment") == ((), ())
    assert plan("--augment-sources", "fsdd") == (("vtlp",), ("fsdd",))
    with pytest.raises(ValueError, match="does not have: mbrolla .*it has: espeak-ng, fsdd, mbrola"):
        plan("--augment", "vtlp", "--augment-sources", "mbrolla")


def test_a_plan_states_the_duration_of_the_example_the_collator_builds():
    torch.manual_seed(0)
    words = [0.1 * torch.randn(int(SAMPLE_RATE * seconds)) for seconds in (0.3, 0.45, 0.5)]
    pool = [{"audio": in_memory(clip), "name": f"word {i}", "text": text, "seconds": len(clip) / SAMPLE_RATE}
            for i, (clip, text) in enumerate(zip(words, ("one", "two", "three")))]
    tokenizer = train_hf.build_tokenizer(["one two three"])
    config = tiny_config(vocab_size=len(tokenizer))
    collate = train_hf.Collator(config, tokenizer, (), {"ann": pool}, join_probability=1.0)
    row = {**pool[0], "speaker": "ann", "labels": tokenizer("one").input_ids + [2], "augment": True}
    generator = torch.Generator().manual_seed(1)
    for probability in (0.0, 1.0):  # joined words, then non-speech
        for _ in range(5):
            plan = train_hf.draw_plan(row, {"ann": pool}, 1.0, probability, generator)
            clip, labels = collate.example({**row, "plan": plan})
            assert abs(len(clip) / SAMPLE_RATE - plan.seconds) < 1e-3 * (len(plan.words) + 1)
            if plan.kind == "joined":
                assert tokenizer.decode(labels, skip_special_tokens=True) == " ".join(pool[w]["text"] for w in plan.words)
            else:
                assert plan.kind == "non_speech" and labels == [config.eos_token_id]


def test_word_pools_come_from_training_speakers_only_and_joined_labels_match_the_text():
    torch.manual_seed(0)
    rows = [{"audio": in_memory(0.1 * torch.randn(2000)), "text": word, "speaker": speaker, "split": split}
            for split, speaker in (("train", "ann"), ("test", "bob")) for word in ("one", "two", "three") * 4]
    train = [row for row in rows if row["split"] == "train"]
    pools = train_hf.word_pools(train)
    assert set(pools) == {"ann"} and len(pools["ann"]) == 12
    assert not train_hf.word_pools(train, minimum=13)
    tokenizer = train_hf.build_tokenizer(["one two three"])
    config = tiny_config(vocab_size=len(tokenizer))
    collate = train_hf.Collator(config, tokenizer, (), pools, join_probability=1.0)
    labelled = [{**row, "labels": tokenizer(row["text"]).input_ids + [2], "augment": True} for row in train]
    batch = collate(labelled[:4])
    texts = tokenizer.batch_decode(batch["labels"].clamp_min(0), skip_special_tokens=True)
    assert all(2 <= len(text.split()) <= 7 and set(text.split()) <= {"one", "two", "three"} for text in texts)
    lengths = batch["attention_mask"].sum(1)
    assert all(length >= 2000 * len(text.split()) // 160 for length, text in zip(lengths.tolist(), texts))


def waveform_augmentations(generator):
    """Each waveform augmentation at a random strength (as the collator draws it) and at its identity."""
    return {
        "speed": (lambda clip: train_hf.change_speed(clip, 1.1), lambda clip: train_hf.change_speed(clip, 1.0)),
        "reverb": (lambda clip: train_hf.reverberate(clip, 0.5, 3.0, generator), lambda clip: train_hf.reverberate(clip, 0.0, 3.0)),
        "noise": (
            lambda clip: train_hf.add_noise(clip, train_hf.non_speech(len(clip), "pink", generator), 10.0),
            lambda clip: train_hf.add_noise(clip, torch.randn(len(clip)), math.inf),
        ),
        "telephone": (train_hf.telephone_band, lambda clip: train_hf.telephone_band(clip, 0.0, SAMPLE_RATE / 2, mu_law=False)),
    }


@pytest.mark.parametrize("name", ["speed", "reverb", "noise", "telephone"])
def test_waveform_augmentations_keep_length_and_rate_are_finite_seeded_and_identity_at_zero(name):
    clip = 0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(0)) * torch.hann_window(8000)
    augment, identity = waveform_augmentations(torch.Generator().manual_seed(1))[name]
    out = augment(clip)
    expected_length = math.ceil(len(clip) / 1.1) if name == "speed" else len(clip)  # speed: 1.1x faster, same 16 kHz
    assert out.shape == (expected_length,) and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert not torch.allclose(out[: len(clip)], clip[: len(out)], atol=1e-3)
    again = waveform_augmentations(torch.Generator().manual_seed(1))[name][0](clip)
    assert torch.equal(out, again)
    assert_close(identity(clip), clip, atol=1e-5)


def test_telephone_band_removes_what_a_phone_line_does_not_carry():
    low, speech, high = (sine(f, SAMPLE_RATE, SAMPLE_RATE).float() for f in (100.0, 1000.0, 6000.0))
    out = train_hf.telephone_band(0.3 * (low + speech + high), mu_law=False)
    spectrum = torch.fft.rfft(out).abs()  # 1 Hz bins
    assert spectrum[1000] > 100 * spectrum[100] and spectrum[1000] > 100 * spectrum[6000]


def test_reverberation_lengthens_the_decay_of_a_click():
    click = torch.zeros(SAMPLE_RATE)
    click[100] = 1.0
    out = train_hf.reverberate(click, 0.6, 0.0, torch.Generator().manual_seed(0))
    assert out[: 100].abs().max() < 1e-6  # causal: nothing before the click (FFT rounding aside)
    assert out[SAMPLE_RATE // 4 :].abs().max() > 1e-3  # a tail 0.25 s on, where the dry click has none
    assert out[SAMPLE_RATE // 2 :].square().sum() < out[100 : SAMPLE_RATE // 4].square().sum()  # that decays


def test_vocal_tract_warp_is_identity_at_one_and_moves_a_formant_by_alpha():
    features = brope_asr.log_mel_spectrogram(0.3 * sine(1500.0, SAMPLE_RATE, 8000).float())
    assert_close(train_hf.warp_frequencies(features, 1.0), features, atol=1e-6)
    centers = brope_asr.mel_centers(80)
    peak = lambda f: centers[int(f.mean(1).argmax())]  # noqa: E731
    for alpha in (0.9, 1.1):
        warped = train_hf.warp_frequencies(features, alpha)
        assert warped.shape == features.shape and bool(torch.isfinite(warped).all())
        assert abs(float(peak(warped)) - 1500.0 * alpha) < 0.06 * 1500.0


def test_narrow_band_floors_the_bins_above_4_khz_keeps_the_rest_and_is_identity_at_the_full_band():
    features = brope_asr.log_mel_spectrogram(0.3 * (sine(1000.0, SAMPLE_RATE, 8000) + sine(6000.0, SAMPLE_RATE, 8000)).float())
    out = train_hf.narrow_band(features)
    kept = brope_asr.mel_bins_below(80, 4000.0)
    assert out.shape == features.shape and bool(torch.isfinite(out).all()) and kept == 62
    assert torch.equal(out[:kept], features[:kept])
    assert features[kept:].amax() > features.amax() - 0.5  # the 6 kHz tone was there ...
    torch.testing.assert_close(out[kept:], torch.full_like(out[kept:], float(features.amax()) - 2.0))  # ... and is at the floor
    assert torch.equal(train_hf.narrow_band(features, SAMPLE_RATE / 2), features)


def test_collator_narrows_the_band_of_about_half_the_rows_and_leaves_the_others_clean():
    config = tiny_config()
    clips = random_clips(*[3000 + 100 * i for i in range(24)])
    rows = [{"audio": in_memory(clip), "labels": [5, 2], "augment": True} for clip in clips]
    clean = brope_asr.batch_inputs(clips, config)
    batch = train_hf.Collator(config, augmentations=("narrowband",), generator=torch.Generator().manual_seed(0))(rows)
    narrowed = 0
    for row, length in enumerate(clean["attention_mask"].sum(1).tolist()):
        features, got = clean["input_features"][row, :, :length], batch["input_features"][row, :, :length]
        narrowed += not torch.equal(got, features)
        assert torch.equal(got, features) or torch.equal(got, train_hf.narrow_band(features))
        assert torch.equal(batch["input_features"][row, :, length:], clean["input_features"][row, :, length:])  # padding stays 0
    assert 6 <= narrowed <= 18


@pytest.mark.parametrize("kind", train_hf.NON_SPEECH_KINDS)
def test_non_speech_clips_have_the_asked_length_finite_level_and_a_seed(kind):
    clip = train_hf.non_speech(12345, kind, torch.Generator().manual_seed(0))
    assert clip.shape == (12345,) and clip.dtype == torch.float32 and bool(torch.isfinite(clip).all())
    assert float(clip.abs().max()) <= 1.0
    assert torch.equal(clip, train_hf.non_speech(12345, kind, torch.Generator().manual_seed(0)))


def test_collator_is_reproducible_under_a_seeded_generator():
    tokenizer = train_hf.build_tokenizer(["one two"])
    config = tiny_config(vocab_size=len(tokenizer))
    rows = [{"audio": in_memory(clip), "labels": [5, 2], "text": "one", "speaker": "", "augment": True}
            for clip in random_clips(4000, 6000)]
    batches = [train_hf.Collator(config, tokenizer, train_hf.AUGMENTATIONS, non_speech_probability=0.5,
                                 generator=torch.Generator().manual_seed(3))(rows) for _ in range(2)]
    for name in batches[0]:
        assert torch.equal(batches[0][name], batches[1][name])
    with pytest.raises(ValueError, match="unknown augmentations"):
        train_hf.Collator(config, augmentations=("echo",))


def test_augment_option_names_each_augmentation_or_all_or_none():
    assert train_hf.parse_augmentations("all") == train_hf.AUGMENTATIONS and train_hf.parse_augmentations("none") == ()
    assert train_hf.parse_augmentations("speed, reverb") == ("speed", "reverb")
    with pytest.raises(ValueError, match="echo"):
        train_hf.parse_augmentations("speed,echo")


@pytest.mark.slow
def test_training_with_empty_labelled_non_speech_teaches_silence_for_noise_tones_and_silence():
    torch.manual_seed(0)
    spoken = {}  # two real recordings of different words, from the shipped training split
    for row in read_metadata():
        if row["split"] == "train" and row["source"] == "fsdd" and row["transcription"] in ("one", "two"):
            spoken.setdefault(row["transcription"], brope_asr.load_audio(str(DATA / row["file_name"])))
    texts, speech = list(spoken), list(spoken.values())
    tokenizer = train_hf.build_tokenizer(texts)
    config = tiny_config(vocab_size=len(tokenizer), d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, init_std=0.02)
    rows = [{"audio": in_memory(clip), "labels": tokenizer(text, add_special_tokens=False).input_ids + [2],
             "text": text, "speaker": "", "augment": True} for clip, text in zip(speech, texts)]
    collate = train_hf.Collator(config, tokenizer, (), non_speech_probability=0.5)
    model = BRoPEASRForConditionalGeneration(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(**collate(rows * 4)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    generator = torch.Generator().manual_seed(99)  # clips never seen in training
    fresh = [train_hf.non_speech(int(SAMPLE_RATE * 1.5), kind, generator) for kind in ("silence", "white", "tones", "hum")]
    assert brope_asr.transcribe(model, tokenizer, fresh) == ["", "", "", ""]
    assert brope_asr.transcribe(model, tokenizer, speech) == texts


def test_collator_leaves_training_rows_clean_at_augment_probability_zero():
    config = tiny_config(input_mode="both")
    clips = random_clips(4000, 2500)
    rows = [{"audio": in_memory(clip), "labels": [5, 2], "augment": True} for clip in clips]
    batch = train_hf.Collator(config, augment_probability=0.0, generator=torch.Generator().manual_seed(0))(rows)
    expected = brope_asr.batch_inputs(clips, config)
    for name in ("input_features", "waveform", "attention_mask"):
        torch.testing.assert_close(batch[name], expected[name], rtol=0, atol=0)
    varied = train_hf.Collator(config, augment_probability=1.0, generator=torch.Generator().manual_seed(0))(rows)
    assert not torch.equal(varied["input_features"][:, :, :10], expected["input_features"][:, :, :10])


def test_vtlp_warps_by_a_factor_from_the_range_given_and_a_bad_range_is_refused():
    config = tiny_config()
    clips = random_clips(4000, 2500)
    rows = [{"audio": in_memory(clip), "labels": [5, 2], "augment": True} for clip in clips]
    clean = brope_asr.batch_inputs(clips, config)
    for low, high in ((1.0, 1.0), (1.2, 1.2), (0.8, 0.8)):  # a range of one point: that warp exactly
        batch = train_hf.Collator(config, augmentations=("vtlp",), vtlp_range=(low, high), generator=torch.Generator().manual_seed(0))(rows)
        for row, length in enumerate(clean["attention_mask"].sum(1).tolist()):
            expected = train_hf.warp_frequencies(clean["input_features"][row, :, :length], low)
            torch.testing.assert_close(batch["input_features"][row, :, :length], expected, rtol=0, atol=0)
    assert train_hf.parse_args(["--vtlp-range", "0.85,1.15"]).vtlp_range == (0.85, 1.15)
    assert train_hf.parse_args([]).vtlp_range == train_hf.VTLP_RANGE == (0.9, 1.1)
    for bad in ("1.1,0.9", "0,1", "0.9", "a,b"):
        with pytest.raises(SystemExit):
            train_hf.parse_args(["--vtlp-range", bad])


def test_collator_augments_only_the_rows_of_augment_sources():
    config = tiny_config(input_mode="both")
    clips = random_clips(4000, 2500)
    rows = [{"audio": in_memory(clip), "labels": [5, 2], "augment": True, "source": source}
            for clip, source in zip(clips, ("espeak-ng", "fsdd"))]
    batch = train_hf.Collator(config, augmentations=("gain", "vtlp"), augment_sources=("fsdd",),
                              generator=torch.Generator().manual_seed(0))(rows)
    expected = brope_asr.batch_inputs(clips, config)
    for name in ("input_features", "waveform"):
        torch.testing.assert_close(batch[name][0], expected[name][0], rtol=0, atol=0)  # espeak-ng: clean
        assert not torch.equal(batch[name][1], expected[name][1])  # fsdd: augmented

