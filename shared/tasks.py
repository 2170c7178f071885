"""The machine-vision tasks a frame can be coded for, with their stable wire ids."""

from __future__ import annotations

from enum import Enum

from icmh.errors import InvalidInputError


class Task(str, Enum):
    """A task; ``HUMAN`` means no adapters (the untouched base codec)."""

    HUMAN = "human"
    DETECTION = "detection"
    SEGMENTATION = "segmentation"
    CLASSIFICATION = "classification"

    def __str__(self) -> str:
        return self.value

    @property
    def wire_id(self) -> int:
        """The task's id in the bitstream header and on the wire (stable across versions)."""
        return _WIRE_IDS[self]

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


_WIRE_IDS = {Task.HUMAN: 0, Task.DETECTION: 1, Task.SEGMENTATION: 2, Task.CLASSIFICATION: 3}
