"""The consumers a frame can be coded for, with their stable wire ids.

* ``human``: the base codec's picture, for people (no adapters);
* high-level machine tasks: ``detection``, ``segmentation``, ``classification``;
* ``machine``: a generic machine consumer trained without any task model of the
  deployment (UG-ICM's task-agnostic supervision); its result is the machine-oriented picture;
* low-level machine vision (LL-ICM): ``denoise``, ``deblur``, ``super-resolution`` (×2)
  and ``low-light``, whose result is the restored picture.
"""

from __future__ import annotations

from enum import Enum

from icmh.errors import InvalidInputError


class Task(str, Enum):
    """A task; ``HUMAN`` means no adapters (the untouched base codec)."""

    HUMAN = "human"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"
    MACHINE = "machine"
    DENOISE = "denoise"
    DEBLUR = "deblur"
    SUPER_RESOLUTION = "super-resolution"
    LOW_LIGHT = "low-light"

    def __str__(self) -> str:
        return self.value

    @property
    def wire_id(self) -> int:
        """The task's id in the bitstream header and on the wire (stable across versions)."""
        return _WIRE_IDS[self]

    @property
    def returns_image(self) -> bool:
        """Whether the result of this task is a picture (``human``, ``machine``, restoration)."""
        return self in IMAGE_TASKS

    @property
    def is_restoration(self) -> bool:
        """Whether this is a low-level (restoration) task."""
        return self in RESTORATION_TASKS

    @property
    def uses_adapters(self) -> bool:
        """Whether frames of this task are coded with task adapters."""
        return self is not Task.HUMAN

    @classmethod
    def parse(cls, name: str) -> "Task":
        """Return the task called ``name``; raise :class:`InvalidInputError` naming the valid ones."""
        try:
            return cls(name)
        except ValueError:
            valid = ", ".join(t.value for t in cls)
            raise InvalidInputError(f"unknown task {name!r} (valid: {valid})") from None

    @classmethod
    def from_wire_id(cls, wire_id: int) -> "Task":
        """Return the task with header id ``wire_id``; raise :class:`InvalidInputError` if none."""
        for task, tid in _WIRE_IDS.items():
            if tid == wire_id:
                return task
        raise InvalidInputError(f"unknown task id {wire_id} in frame header")


_WIRE_IDS = {Task.HUMAN: 0, Task.DETECTION: 1, Task.SEGMENTATION: 2, Task.CLASSIFICATION: 3, Task.MACHINE: 4,
             Task.DENOISE: 5, Task.DEBLUR: 6, Task.SUPER_RESOLUTION: 7, Task.LOW_LIGHT: 8}

HIGH_LEVEL_TASKS = (Task.DETECTION, Task.SEGMENTATION, Task.CLASSIFICATION)
RESTORATION_TASKS = (Task.DENOISE, Task.DEBLUR, Task.SUPER_RESOLUTION, Task.LOW_LIGHT)
IMAGE_TASKS = (Task.HUMAN, Task.MACHINE) + RESTORATION_TASKS
#: What ``cloud-server`` serves without ``--tasks``.
DEFAULT_SERVED_TASKS = (Task.HUMAN,) + HIGH_LEVEL_TASKS
