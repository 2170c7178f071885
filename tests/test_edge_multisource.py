"""Several cameras (or videos) on one edge client: read side by side in rounds, encoded in one
batched call where sizes match, each frame decodable exactly, results labelled with their source.

Videos stand in for cameras (no camera here): they take the same capture path (OpenCV).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from icmh.cloud.cli import main as cloud_main
from icmh.codec.weights import load_base_codec
from icmh.codec.frame_codec import FrameCodec
from icmh.edge.cli import Capture, batches_cameras, encode_capture
from icmh.edge.cli import main as edge_main
from icmh.edge.metrics import EdgeMetrics
from icmh.edge.prefetch import capture_rounds
from icmh.tasks import Task

from support import InProcessServer, server_config, smooth_image

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]


def write_video(path: Path, frames: int, size=(96, 128), seed: int = 0) -> Path:
    """An MJPG video of ``frames`` smooth random pictures of ``size`` (H, W)."""
    import cv2

    height, width = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened()
    for index in range(frames):
        picture = smooth_image(height, width, seed=seed + index).permute(1, 2, 0).mul(255).round()
        writer.write(picture.to(torch.uint8).numpy()[:, :, ::-1].copy())
    writer.release()
    return path


# --- rounds ---------------------------------------------------------------------------------------

def test_rounds_hold_one_frame_of_every_source_until_each_ends():
    rounds = list(capture_rounds([iter("abc"), iter("xy"), iter("pqrs")]))
    assert rounds == [[(0, "a"), (1, "x"), (2, "p")], [(0, "b"), (1, "y"), (2, "q")],
                      [(0, "c"), (2, "r")], [(2, "s")]]
    assert list(capture_rounds([])) == []
    assert list(capture_rounds([iter([]), iter([1])])) == [[(1, 1)]]


def test_sources_are_read_side_by_side():
    """Each source has its own capture thread: the second camera's frame is read while the first
    camera is still blocked on its own."""
    second_read, first_may_go = threading.Event(), threading.Event()

    def first():
        assert first_may_go.wait(timeout=30)
        yield "first"

    def second():
        second_read.set()
        yield "second"

    rounds = capture_rounds([first(), second()])
    waiter = threading.Thread(target=lambda: second_read.wait(timeout=30) and first_may_go.set())
    waiter.start()
    assert next(rounds) == [(0, "first"), (1, "second")]
    waiter.join()


def test_a_source_error_is_raised_and_closing_stops_every_reader():
    def broken():
        yield 1
        raise OSError("camera 1 unplugged")

    rounds = capture_rounds([iter(range(100)), broken()])
    assert next(rounds) == [(0, 0), (1, 1)]
    with pytest.raises(OSError, match="unplugged"):
        next(rounds)

    read = []

    def endless():
        while True:
            read.append(len(read))
            yield len(read)

    rounds = capture_rounds([endless(), endless()], depth=1)
    next(rounds)
    rounds.close()
    threading.Event().wait(0.5)  # the readers notice within 0.1 s
    count = len(read)
    threading.Event().wait(0.3)
    assert len(read) == count <= 6


# --- batched encoding -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def frame_codec() -> FrameCodec:
    return FrameCodec(load_base_codec("mbt2018-mean-tiny", 1))


SIZES = [(64, 128), (96, 64), (64, 128)]  # three cameras, two of one size


def encode_rounds(frame_codec: FrameCodec, batch: bool) -> tuple:
    """Two rounds of the three cameras encoded; returns the capture, the frames and the batch sizes of
    the codec's forward passes (recorded around the real one)."""
    sources = [iter([smooth_image(h, w, seed=10 * k + i) for i in range(2)]) for k, (h, w) in enumerate(SIZES)]
    capture = Capture.of(sources, ["camera 0", "camera 1", "camera 2"])
    batches = []
    compress = frame_codec._compress

    def recording(images, task):
        batches.append(images.shape[0])
        return compress(images, task)

    frame_codec._compress = recording
    try:
        frames = list(encode_capture(capture, frame_codec, Task.HUMAN, EdgeMetrics(), batch=batch))
    finally:
        del frame_codec._compress
    return capture, frames, batches


def test_a_round_encodes_same_size_frames_in_one_batch_and_each_decodes_exactly(frame_codec):
    """With batching, one forward pass of batch 2 and one of batch 1 per round; every frame's
    latent comes back bit-exactly from its own bitstream."""
    sizes = SIZES
    capture, frames, batches = encode_rounds(frame_codec, batch=True)
    assert batches == [2, 1, 2, 1], batches  # two rounds: (0, 2) together, 1 alone
    assert capture.origins == [0, 1, 2, 0, 1, 2]
    assert [capture.source_of(i) for i in (1, 5)] == ["camera 1", "camera 2"]
    assert [(f.height, f.width) for f in frames] == sizes * 2

    images = [smooth_image(64, 128, seed=s) for s in (0, 20)]
    batched = frame_codec.encode(images, Task.HUMAN, keep_latents=True)
    for frame in batched:
        decoded = frame_codec.decode([frame.data])[0]
        assert torch.equal(decoded.y_hat, frame.y_hat)


def test_without_batching_each_frame_is_its_own_pass_and_auto_batches_on_a_gpu_only(frame_codec):
    capture, frames, batches = encode_rounds(frame_codec, batch=False)
    assert batches == [1] * 6 and capture.origins == [0, 1, 2, 0, 1, 2]
    assert [(f.height, f.width) for f in frames] == SIZES * 2
    assert not batches_cameras("auto", frame_codec)  # this codec runs on the CPU
    assert batches_cameras("on", frame_codec) and not batches_cameras("off", frame_codec)


# --- the command ----------------------------------------------------------------------------------

def test_two_videos_offline_write_one_folder_per_source_that_cloud_server_decodes(tmp_path, capsys):
    first = write_video(tmp_path / "a.avi", 3)
    second = write_video(tmp_path / "b.avi", 2, seed=50)
    frames = tmp_path / "frames"
    assert edge_main(["--video", str(first), "--video", str(second), "--task", "human", *TINY,
                      "--save-dir", str(frames)]) == 0
    assert sorted(p.name for p in (frames / "source-0").iterdir()) == [f"frame_00000{i}.icmh" for i in range(3)]
    assert sorted(p.name for p in (frames / "source-1").iterdir()) == [f"frame_00000{i}.icmh" for i in range(2)]
    capsys.readouterr()
    assert cloud_main(["--input-dir", str(frames / "source-1"), "--output-dir", str(tmp_path / "out"), *TINY]) == 0
    assert "decoded 2 of 2 frames" in capsys.readouterr().out


def test_two_videos_streamed_get_results_labelled_with_their_source(tmp_path, capsys):
    first = write_video(tmp_path / "front.avi", 3, size=(64, 128))
    second = write_video(tmp_path / "back.avi", 2, size=(96, 64), seed=7)
    server = InProcessServer(server_config([Task.HUMAN]))
    try:
        out = tmp_path / "results.jsonl"
        assert edge_main(["--video", str(first), "--video", str(second), "--task", "human", *TINY,
                          "--random-weights", "--server", f"127.0.0.1:{server.port}", "--output", str(out)]) == 0
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame_id"] for r in records] == list(range(5))
    assert [r["source"] for r in records] == ["video front.avi", "video back.avi"] * 2 + ["video front.avi"]
    assert [(r["result"]["height"], r["result"]["width"]) for r in records] == [(64, 128), (96, 64)] * 2 + [(64, 128)]
    text = capsys.readouterr()
    assert "[video back.avi] frame    1:" in text.out
    assert "5 answered, 0 with errors" in text.err


def test_a_missing_second_camera_is_a_one_line_error(tmp_path, capsys):
    video = write_video(tmp_path / "a.avi", 2)
    assert edge_main(["--video", str(video), "--video", str(tmp_path / "none.avi"), *TINY,
                      "--save-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "none.avi does not exist" in err[0]
    assert not (tmp_path / "out").exists()
