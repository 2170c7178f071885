"""The edge pipeline: capture runs ahead of encoding (a real thread, real queue), errors keep
their place, a closed pipeline stops reading; the live line shows the encoder's share."""

from __future__ import annotations

import threading

import pytest

from icmh.edge.output import LiveLine
from icmh.edge.prefetch import Prefetcher


def test_items_arrive_in_order_and_all_of_them():
    assert list(Prefetcher(iter(range(50)), depth=3)) == list(range(50))
    assert list(Prefetcher(iter([]))) == []


def test_the_next_frame_is_captured_while_the_current_one_is_processed():
    captured = [threading.Event() for _ in range(3)]

    def camera():
        for index, event in enumerate(captured):
            event.set()
            yield index

    frames = Prefetcher(camera(), depth=2)
    assert next(frames) == 0
    # the consumer holds frame 0 (encoding it); frame 1 is read meanwhile, without asking
    assert captured[1].wait(timeout=30), "frame 1 was not captured while frame 0 was being processed"
    assert list(frames) == [1, 2]


def test_a_source_error_is_raised_at_its_place():
    def source():
        yield 1
        yield 2
        raise OSError("camera unplugged")

    frames = Prefetcher(source())
    assert next(frames) == 1 and next(frames) == 2
    with pytest.raises(OSError, match="camera unplugged"):
        next(frames)


def test_closing_stops_reading_the_source():
    read = []

    def endless():
        index = 0
        while True:
            read.append(index)
            yield index
            index += 1

    frames = Prefetcher(endless(), depth=2)
    assert next(frames) == 0
    frames.close()
    threading.Event().wait(0.5)  # the reader notices within 0.1 s
    count = len(read)
    threading.Event().wait(0.3)
    assert len(read) == count <= 4  # frame 0, two queued, one being put when it stopped


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        next(Prefetcher(iter([1]), depth=0))


def test_the_live_line_shows_the_encoder_time_and_share():
    live = LiveLine(interactive=False)
    assert "encode" not in live.text()
    live.add(0.1, 0.05)
    live.add_encode(0.040)
    live.add_encode(0.060)
    text = live.text()
    assert "encode 50 ms/frame" in text and "% of the run)" in text
