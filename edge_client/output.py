"""What the edge client prints and writes per frame: the live status line, one text or JSON
record per answered frame (single-task results, or one entry per consumer of a universal frame)."""

from __future__ import annotations

import collections
import statistics
import sys
import time
from typing import Deque, Optional

from icmh.service.result_proto import result_from_proto

from icmh.edge.streaming import FrameOutcome


class LiveLine:
    """The compact live status line (stderr) and the end-of-run summary.

    Bounded state: frame count and bits-per-pixel sum, and the last :data:`WINDOW` round
    trips for the percentiles (the exported histograms hold the whole run).
    """

    WINDOW = 1024

    def __init__(self, interactive: Optional[bool] = None) -> None:
        # redrawn in place on a terminal only; piped output gets the per-frame lines and the summary
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.clear = "\r\033[K" if self.interactive and sys.stdout.isatty() else ""  # before a per-frame line
        self.start = time.perf_counter()
        self.frames = 0
        self.bpp_sum = 0.0
        self.round_trips: Deque[float] = collections.deque(maxlen=self.WINDOW)
        self.last_print = 0.0
        self.encoded = 0
        self.encode_seconds = 0.0

    def add_encode(self, seconds: float) -> None:
        """Count the encoding time of one frame (the live line shows the encoder's share of the run)."""
        self.encoded += 1
        self.encode_seconds += seconds

    def add(self, bpp: float, round_trip: Optional[float] = None) -> None:
        """Count one frame (and its round trip); redraw the line at most twice a second."""
        self.frames += 1
        self.bpp_sum += bpp
        if round_trip is not None:
            self.round_trips.append(round_trip)
        now = time.perf_counter()
        if self.interactive and now - self.last_print > 0.5:
            self.last_print = now
            print(f"\r{self.text()}", end="", file=sys.stderr, flush=True)

    def text(self) -> str:
        """Frames, frames per second, mean bpp, the encoder's time per frame and share of the run, and the
        recent round-trip percentiles."""
        wall = max(time.perf_counter() - self.start, 1e-9)
        line = f"frames {self.frames}  {self.frames / wall:.2f} fps  mean bpp {self.bpp_sum / max(self.frames, 1):.4f}"
        if self.encoded:
            line += (f"  encode {1e3 * self.encode_seconds / self.encoded:.0f} ms/frame "
                     f"({min(self.encode_seconds / wall, 1.0):.0%} of the run)")
        if len(self.round_trips) >= 2:
            cuts = statistics.quantiles(self.round_trips, n=20)
            line += f"  round trip p50 {1e3 * statistics.median(self.round_trips):.0f} ms p95 {1e3 * cuts[18]:.0f} ms"
        return line


def outcome_json(outcome: FrameOutcome) -> dict:
    """The JSON record of one answered frame: its size, round trip, and its result (or, for a
    universal frame, ``results``: one per consumer), or its error."""
    response = outcome.response
    record = {"frame_id": outcome.frame_id, "bytes": len(outcome.encoded.data), "bpp": round(outcome.encoded.bpp, 6),
              "round_trip_ms": round(1e3 * outcome.round_trip_seconds, 2)}
    if response.HasField("error"):
        record["error"] = {"code": response.error.code, "message": response.error.message}
        return record
    if response.results:
        record["results"] = [result_from_proto(entry).to_json() for entry in response.results]
    else:
        record["result"] = result_from_proto(response).to_json()
    record["server_ms"] = round(1e3 * response.times.total_seconds, 2)
    return record


def outcome_text(record: dict) -> str:
    """One line for a person: the source (with several), frame, bytes, bpp, round trip, then the results
    (or the error)."""
    source = f"[{record['source']}] " if "source" in record else ""
    head = (f"{source}frame {record['frame_id']:4d}: {record['bytes']:7,d} B  {record['bpp']:.4f} bpp  "
            f"round trip {record['round_trip_ms']:7.1f} ms")
    if "error" in record:
        return f"{head}  error {record['error']['code']}: {record['error']['message']}"
    if "results" in record:
        return head + "".join(f"  | {result['task']} [{result.get('model') or '?'}] {found(result)}"
                              for result in record["results"])
    result = record["result"]
    return f"{head}  [{result.get('model') or '?'}] {found(result)}"


def found(result: dict) -> str:
    """What a result holds, in a few words: the top detections or classes, or the image size."""
    if result["detections"]:
        text = ", ".join(f"{d['label_name']} {d['score']:.2f}" for d in result["detections"][:5])
        more = len(result["detections"]) - 5
        return text + (f" (+{more} more)" if more > 0 else "")
    if result["classes"]:
        return ", ".join(f"{c['name']} {c['score']:.2f}" for c in result["classes"][:3])
    if result.get("image_png_base64"):
        return f"image {result['width']}×{result['height']}"
    return "nothing found"
