"""Rate–distortion training of a base codec (how the bundled tiny codec is made)."""

from shared.frame_codec import FrameCodec
from shared.tasks import Task
from shared.weights import load_base_codec
from training.data import RandomCrops
from training.rd import RDTrainConfig, train_and_save

from conftest import smooth_image


def test_short_rd_training_lowers_the_loss_and_saves_a_loadable_codec(kodak_dir, tmp_path):
    config = RDTrainConfig(data=[kodak_dir], steps=30, batch_size=4, crop=64, lr=1e-3, lmbda=0.01)
    out = tmp_path / "tiny.safetensors"
    train_and_save(config, out, progress=False)
    losses = [r["loss"] for r in config.history]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    loaded = load_base_codec("mbt2018-mean-tiny", 1, weights=out)
    codec = FrameCodec(loaded)
    frame = codec.encode([smooth_image(64, 64)], Task.HUMAN)[0]
    assert codec.decode([frame.data])[0].image.shape == (3, 64, 64)


def test_random_crops_are_repeatable_and_sized(kodak_dir):
    a, b = RandomCrops([kodak_dir], crop=48, seed=3), RandomCrops([kodak_dir], crop=48, seed=3)
    assert a[5].shape == (3, 48, 48)
    assert (a[5] == b[5]).all() and not (a[5] == a[6]).all()
