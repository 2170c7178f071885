"""Task results ↔ protobuf messages (``icmh.v1``)."""

from __future__ import annotations

from typing import List

from icmh.v1 import icmh_pb2 as pb
from icmh.results import Box, ClassScore, Detection, TaskResult


def result_to_proto(result: TaskResult, response: pb.InferResponse) -> pb.InferResponse:
    """Fill ``response`` with ``result`` (task, size, detections, classes, PNG); returns it."""
    response.task = result.task.value
    response.model = result.model
    response.width, response.height = result.width, result.height
    for det in result.detections:
        mask = det.mask_rle["counts"].encode() if det.mask_rle else b""
        response.detections.add(
            box=pb.BoundingBox(x0=det.box.x0, y0=det.box.y0, x1=det.box.x1, y1=det.box.y1),
            label=det.label, label_name=det.label_name, score=det.score, mask_rle=mask,
        )
    for cls in result.classes:
        response.classes.add(index=cls.index, name=cls.name, score=cls.score)
    if result.image_png is not None:
        response.image_png = result.image_png
    return response


def result_from_proto(response: pb.InferResponse) -> TaskResult:
    """The :class:`TaskResult` carried by ``response`` (masks as COCO RLE dicts)."""
    size = [response.height, response.width]
    detections: List[Detection] = [
        Detection(Box(d.box.x0, d.box.y0, d.box.x1, d.box.y1), d.label, d.label_name, d.score,
                  {"size": size, "counts": d.mask_rle.decode()} if d.mask_rle else None)
        for d in response.detections
    ]
    classes = [ClassScore(c.index, c.name, c.score) for c in response.classes]
    return TaskResult(response.task, response.width, response.height, detections, classes,
                      response.image_png or None, response.model)
