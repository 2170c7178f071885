"""SFMA and its ablation variants: structure, parameter counts, initialisation."""

import pytest
import torch

from icmh.models.adapted import AdaptedCodec, AdapterConfig
from icmh.models.adapters import FrequencyModulation, build_adapter
from icmh.models.registry import get_codec
from icmh.tasks import Task


def _six_adapter_params(variant: str, d: int) -> int:
    spec = get_codec("mbt2018-mean")
    codec = AdaptedCodec(spec.build(3), spec, 3)
    return sum(p.numel() for p in codec.add_adapters(Task.DETECTION, AdapterConfig(variant, d)).parameters())


def _method_formula(variant: str, c: int, d: int) -> int:
    sma = 2 * (c * d + d) + 26 * d + (d * c + c)
    fma = (c * d + d) + 10 * d + (d * d + d) + (d * c + c)
    return 6 * {"sfma": sma + fma, "sma": sma, "fma": fma}[variant]


# METHOD.md's table (mbt2018-mean quality 3: C = N = 128, six adapters), paper values in M.
PAPER_TABLE = [("sfma", 1, 5_622, 0.005), ("sfma", 32, 138_240, 0.14), ("sfma", 64, 287_232, 0.28),
               ("sfma", 128, 622_080, 0.62), ("sma", 64, 158_976, 0.16), ("fma", 64, 128_256, 0.12)]


@pytest.mark.parametrize("variant,d,exact,paper_millions", PAPER_TABLE)
def test_adapter_parameter_counts_reproduce_method_table(variant, d, exact, paper_millions):
    count = _six_adapter_params(variant, d)
    assert count == exact == _method_formula(variant, 128, d)
    # the paper prints rounded (sometimes truncated) millions: within one unit of its last digit
    last_digit = 0.001 if paper_millions < 0.01 else 0.01
    assert abs(count / 1e6 - paper_millions) < last_digit


def test_sfma_is_about_four_percent_of_mbt2018_mean():
    spec = get_codec("mbt2018-mean")
    base_params = sum(p.numel() for p in spec.build(3).parameters())
    assert round(100 * 287_232 / base_params, 1) == 4.1


def test_plain_adapter_is_two_projections_with_relu():
    adapter = build_adapter("plain", 128, 64)
    names = {n for n, _ in adapter.named_parameters()}
    assert names == {"branches.plain.down.weight", "branches.plain.down.bias",
                     "branches.plain.up.weight", "branches.plain.up.bias"}


@pytest.mark.parametrize("variant", ["sfma", "sma", "fma", "plain"])
def test_zero_initialised_adapter_is_exactly_the_identity(variant):
    x = torch.randn(2, 128, 19, 33)
    assert torch.equal(build_adapter(variant, 128, 16)(x), x)


@pytest.mark.parametrize("variant", ["sfma", "sma", "fma", "plain"])
def test_authors_initialisation_changes_the_features(variant):
    torch.manual_seed(0)
    x = torch.randn(1, 128, 16, 16)
    assert not torch.allclose(build_adapter(variant, 128, 16, init="authors")(x), x)


def test_frequency_gate_keeps_the_phase_of_the_spectrum():
    torch.manual_seed(0)
    fma = FrequencyModulation(8, 4)
    u = torch.randn(1, 4, 12, 10)
    spectrum = torch.fft.rfft2(u)
    gate = torch.sigmoid(fma.mix(torch.relu(fma.dw(spectrum.abs()))))
    gated = spectrum * gate
    assert torch.all(gate > 0)
    assert torch.allclose(torch.angle(gated), torch.angle(spectrum), atol=1e-5)
    assert torch.allclose(gated.abs(), spectrum.abs() * gate, atol=1e-5)


def test_sfma_branches_run_in_parallel_on_the_same_input():
    torch.manual_seed(0)
    adapter = build_adapter("sfma", 32, 8, init="authors")
    x = torch.randn(1, 32, 8, 8)
    expected = x + adapter.branches["sma"](x) + adapter.branches["fma"](x)
    assert torch.allclose(adapter(x), expected)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown adapter variant"):
        build_adapter("lora", 128, 64)
