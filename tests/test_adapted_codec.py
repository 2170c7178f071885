"""The adapted codec: fresh adapters are the base codec bit for bit; training touches adapters only."""

import pytest
import torch

from icmh.models.adapted import AdaptedCodec, AdapterConfig
from icmh.models.registry import CODECS, get_codec
from icmh.tasks import Task
from icmh.codec.weights import load_base_codec

from support import smooth_image

# every registered codec at its lowest and highest quality (N changes with quality)
CASES = [(name, q) for name, spec in CODECS.items() for q in sorted({spec.qualities[0], spec.qualities[-1]})]


def _codec(name: str, quality: int) -> AdaptedCodec:
    loaded = load_base_codec(name, quality, random_weights=True)
    return AdaptedCodec(loaded.model, loaded.spec, quality)


@pytest.mark.parametrize("name,quality", CASES)
def test_fresh_adapters_give_bit_identical_strings_and_images(name, quality):
    codec = _codec(name, quality)
    codec.add_adapters(Task.DETECTION, AdapterConfig(init="zero"))
    x = torch.stack([smooth_image(64, 128, seed=1), smooth_image(64, 128, seed=2)])
    human = codec.compress(x)
    with codec.use(Task.DETECTION):
        adapted = codec.compress(x)
    assert adapted["strings"] == human["strings"]
    assert adapted["index_checks"] == human["index_checks"]
    decoded_human = codec.decompress(human["strings"], human["shape"], human["index_checks"])
    with codec.use(Task.DETECTION):
        decoded_adapted = codec.decompress(adapted["strings"], adapted["shape"], adapted["index_checks"])
    assert torch.equal(decoded_adapted["x_hat"], decoded_human["x_hat"])
    assert torch.equal(decoded_human["y_hat"], human["y_hat"])


@pytest.mark.parametrize("name,quality", CASES)
def test_nonzero_adapters_change_the_reconstruction(name, quality):
    codec = _codec(name, quality)
    torch.manual_seed(0)
    codec.add_adapters(Task.DETECTION, AdapterConfig(init="authors"))
    x = smooth_image(64, 64, seed=3)[None]
    with codec.use(Task.DETECTION):
        adapted = codec.compress(x)
        decoded = codec.decompress(adapted["strings"], adapted["shape"], adapted["index_checks"])
    human = codec.compress(x)
    decoded_human = codec.decompress(human["strings"], human["shape"], human["index_checks"])
    assert not torch.equal(decoded["x_hat"], decoded_human["x_hat"])
    assert torch.equal(decoded["y_hat"], adapted["y_hat"])


@pytest.mark.parametrize("name,quality", CASES)
def test_training_step_updates_only_adapters(name, quality):
    codec = _codec(name, quality)
    codec.add_adapters(Task.CLASSIFICATION, AdapterConfig(init="zero"))
    before = {k: v.clone() for k, v in codec.base.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in codec.adapter_set(Task.CLASSIFICATION).state_dict().items()}
    optimizer = torch.optim.Adam([p for p in codec.parameters() if p.requires_grad], lr=1e-2)
    codec.train()
    x = torch.stack([smooth_image(64, 64, seed=4), smooth_image(64, 64, seed=5)])
    with codec.use(Task.CLASSIFICATION):
        out = codec(x)
    pixels = x.shape[0] * x.shape[-2] * x.shape[-1]
    rate = sum(-torch.log2(l).sum() for l in out["likelihoods"].values()) / pixels
    loss = rate + 100 * torch.mean((out["x_hat"] - x) ** 2)
    loss.backward()
    optimizer.step()
    for name_, param in codec.named_parameters():
        if name_.startswith("base."):
            assert param.grad is None, name_
    adapter_grads = [p.grad for p in codec.adapter_set(Task.CLASSIFICATION).parameters()]
    assert all(g is not None for g in adapter_grads)
    assert any(g.abs().sum() > 0 for g in adapter_grads)
    for key, value in codec.base.state_dict().items():
        assert torch.equal(value, before[key]), key
    after = codec.adapter_set(Task.CLASSIFICATION).state_dict()
    assert any(not torch.equal(after[k], adapter_before[k]) for k in after)
    assert codec.base.training is False


def test_adapters_live_outside_the_base_state_dict():
    spec = get_codec("mbt2018-mean")
    base = spec.build(1)
    keys = set(base.state_dict())
    codec = AdaptedCodec(base, spec, 1)
    codec.add_adapters(Task.DETECTION)
    assert set(codec.base.state_dict()) == keys
    fresh = spec.build(1)
    fresh.load_state_dict(codec.base.state_dict())  # a zoo-style state dict loads unchanged


def test_training_forward_uses_rounded_latents_for_the_decoder():
    codec = _codec("mbt2018-mean-tiny", 1)
    codec.train()
    x = smooth_image(64, 64, seed=6)[None]
    torch.manual_seed(0)
    first = codec(x)["x_hat"]
    torch.manual_seed(1)
    second = codec(x)["x_hat"]
    # noise only enters the likelihoods: the decoder sees straight-through rounded latents
    assert torch.equal(first, second)
    assert first.requires_grad is False  # no adapters, frozen base: nothing to train


def test_selecting_a_task_without_adapters_is_refused():
    codec = _codec("mbt2018-mean-tiny", 1)
    from icmh.errors import AdapterMismatchError
    with pytest.raises(AdapterMismatchError, match="no adapters loaded for task 'segmentation'"):
        codec.set_task(Task.SEGMENTATION)
