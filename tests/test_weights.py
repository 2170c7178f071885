"""Base-codec weights: torch hub cache under the zoo's real file names, files, random, bundled."""

import pickle

import pytest
import torch

from icmh.errors import InvalidInputError, WeightsMissingError
from icmh.models.registry import get_codec
from safetensors import safe_open

from icmh.codec.weights import codec_fingerprint, load_base_codec, save_codec_weights, zoo_file_name
from icmh.hub import checkpoints_dir as hub_checkpoints_dir


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("ICMH_OFFLINE", "1")
    return tmp_path


def _locally_made_checkpoint(name: str, quality: int):
    torch.manual_seed(123)
    model = get_codec(name).build(quality)
    model.update(force=True)
    return model


def test_zoo_file_names_are_compressais():
    assert zoo_file_name(get_codec("mbt2018-mean"), 3) == "mbt2018-mean-3-723404a8.pth.tar"
    assert zoo_file_name(get_codec("bmshj2018-hyperprior"), 1) == "bmshj2018-hyperprior-1-7eb97409.pth.tar"
    assert zoo_file_name(get_codec("cheng2020-anchor"), 6).startswith("cheng2020-anchor-6-")


def test_prefilled_torch_hub_cache_loads_offline(torch_home):
    model = _locally_made_checkpoint("mbt2018-mean", 1)
    folder = hub_checkpoints_dir()
    assert folder == torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / zoo_file_name(get_codec("mbt2018-mean"), 1))
    loaded = load_base_codec("mbt2018-mean", 1)
    assert loaded.pretrained
    assert loaded.fingerprint == codec_fingerprint(model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_missing_zoo_weights_name_the_file_and_the_ways_out(torch_home):
    with pytest.raises(WeightsMissingError) as info:
        load_base_codec("mbt2018-mean", 3)
    message = str(info.value)
    assert "mbt2018-mean-3-723404a8.pth.tar" in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "--codec-weights" in message and "--random-weights" in message
    assert "\n" not in message


def test_weights_file_flag_loads_safetensors_and_torch_files(tmp_path):
    from icmh.codec.weights import save_codec_weights
    model = _locally_made_checkpoint("bmshj2018-hyperprior", 1)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    assert load_base_codec("bmshj2018-hyperprior", 1, weights=tmp_path / "w.pth").fingerprint == codec_fingerprint(model)
    save_codec_weights(model, tmp_path / "w.safetensors")
    assert load_base_codec("bmshj2018-hyperprior", 1, weights=tmp_path / "w.safetensors").pretrained


def test_pickled_objects_are_never_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"weight": Evil()}, handle)
    with pytest.raises(InvalidInputError, match="cannot read weights file"):
        load_base_codec("mbt2018-mean", 1, weights=path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(_locally_made_checkpoint("mbt2018-mean", 1).state_dict(), tmp_path / "w.pth")
    with pytest.raises(InvalidInputError, match="do not fit mbt2018-mean quality 5"):
        load_base_codec("mbt2018-mean", 5, weights=tmp_path / "w.pth")


def test_random_weights_are_seeded_and_labelled():
    a = load_base_codec("mbt2018-mean", 1, random_weights=True, seed=0)
    b = load_base_codec("mbt2018-mean", 1, random_weights=True, seed=0)
    c = load_base_codec("mbt2018-mean", 1, random_weights=True, seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not a.pretrained and "random weights" in a.label


def test_bundled_tiny_codec_loads_with_its_tables():
    loaded = load_base_codec("mbt2018-mean-tiny", 1)
    assert loaded.pretrained and "trained by icmh" in loaded.source
    assert loaded.model.gaussian_conditional.quantized_cdf.numel() > 0


def test_unknown_codec_and_quality_are_clear_errors():
    with pytest.raises(InvalidInputError, match="unknown codec 'jpeg-ai'"):
        load_base_codec("jpeg-ai", 1)
    with pytest.raises(InvalidInputError, match=r"cheng2020-anchor has no quality 7 \(valid: 1, 2, 3, 4, 5, 6\)"):
        load_base_codec("cheng2020-anchor", 7)


def test_saved_codecs_keep_their_constant_buffers(tmp_path):
    """Learned parameters ship as float16; the bounds stay exact (a float16 likelihood
    bound of 0 once let adapter training take log(0) and diverge)."""
    fresh = get_codec("mbt2018-mean-tiny").build(1)
    bundled = load_base_codec("mbt2018-mean-tiny", 1).model  # a file written with float16 buffers
    for name, buffer in fresh.named_buffers():
        if buffer.is_floating_point() and buffer.numel():
            assert torch.equal(dict(bundled.named_buffers())[name], buffer), name
    assert bundled.gaussian_conditional.likelihood_lower_bound.bound.item() == pytest.approx(1e-9)

    path = tmp_path / "codec.safetensors"
    save_codec_weights(bundled, path)
    with safe_open(str(path), "pt") as stored:
        assert stored.get_tensor("g_a.0.weight").dtype == torch.float16
        assert stored.get_tensor("gaussian_conditional.likelihood_lower_bound.bound").item() == pytest.approx(1e-9)
    reloaded = load_base_codec("mbt2018-mean-tiny", 1, weights=path)
    assert codec_fingerprint(reloaded.model) == codec_fingerprint(bundled)


def _shipped_weight_files():
    from icmh.codec.loader import BUNDLED_ADAPTERS_DIR
    from icmh.codec.weights import BUNDLED_DIR
    from icmh.restoration.networks import WEIGHTS_DIR

    return [path for folder in (BUNDLED_DIR, BUNDLED_ADAPTERS_DIR, WEIGHTS_DIR)
            for path in sorted(folder.glob("*.safetensors"))]


@pytest.mark.parametrize("path", _shipped_weight_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_weight_file_names_its_training_images_and_none_is_an_evaluation_image(path, data_dir):
    """Codecs, adapters and restoration networks: the list of training images is recorded in the
    file, every one lies in a training set, and (where the data is here) none is an evaluation image."""
    from icmh.data_splits import evaluation_images, relative_names

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    names = (meta.get("training_images") or meta.get("training_data") or "").split("\n")
    assert names != [""], f"{path.name} does not record its training images"
    training_roots = ("bsds500-train/", "coco-mini/train2017/", "coco-mini/val2017/")
    assert all(name.startswith(training_roots) for name in names), \
        f"{path.name}: trained on images outside the training sets: {[n for n in names if not n.startswith(training_roots)][:3]}"
    if data_dir.is_dir():
        evaluation = {name for files in evaluation_images(data_dir).values() for name in relative_names(files, data_dir)}
        assert evaluation, "no evaluation image found to compare with"
        assert not evaluation & set(names), f"{path.name} was trained on evaluation images"
