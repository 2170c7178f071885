"""Command-line plumbing shared by ``icmh``, ``edge-client`` and ``cloud-server``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from icmh.codec.loader import OWN_CODEC, CodecOptions, default_codec
from icmh.codec.weights import RANDOM_WEIGHTS_WARNING
from icmh.errors import IcmhError, InvalidInputError
from icmh.memory import keep_freed_memory
from icmh.models.encoder_paths import EAGER, ENCODER_PATHS
from icmh.models.registry import CODECS
from icmh.taskmodels import MODELS_DIR_ENV, TASK_MODELS, ModelOptions, get_task_model_spec
from icmh.tasks import Task

EXIT_USAGE = 2


def add_weight_options(parser: argparse.ArgumentParser, *, adapters: bool = True, task_models: bool = False) -> None:
    """Add ``--codec-weights``, the random-weights flags, ``--seed``, ``--device`` and (with ``adapters``) ``--adapters``.

    ``--random-weights`` means the same on every command: seeded random weights for
    everything the command loads (codec, adapters, task models). ``--random-codec``,
    ``--random-adapters`` and ``--random-task-model`` randomise one part only.
    """
    parts = ["codec"] + (["adapters"] if adapters else []) + (["task models"] if task_models else [])
    parser.add_argument("--codec-weights", type=Path, metavar="PATH",
                        help="base codec weights file (default: the CompressAI zoo file in $TORCH_HOME/hub/checkpoints, "
                             "or the project's bundled weights for its own codecs)")
    group = parser.add_argument_group("smoke runs (seeded random weights, loudly labelled)")
    group.add_argument("--random-weights", action="store_true",
                       help=f"seeded random weights for everything this command loads ({', '.join(parts)})")
    group.add_argument("--random-codec", action="store_true", help="seeded random base codec only")
    if adapters:
        group.add_argument("--random-adapters", action="store_true",
                           help="seeded random adapters for tasks that have no adapter file")
    if task_models:
        group.add_argument("--random-task-model", action="store_true", help="seeded random task models only")
    group.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    parser.add_argument("--device", default="cpu", help="torch device for the transforms: cpu or cuda (default: cpu)")
    if adapters:
        parser.add_argument("--adapters", type=Path, action="append", default=[], metavar="FILE",
                            help="adapter checkpoint (.safetensors) of a task, or a folder of them; repeatable")


def add_codec_options(parser: argparse.ArgumentParser, *, task_models: bool = False, encoder: bool = True) -> None:
    """Add ``--codec``, ``--quality`` and (for commands that encode) ``--encoder``, plus :func:`add_weight_options`."""
    default = default_codec()
    parser.add_argument("--codec", default=default, choices=sorted(CODECS),
                        help=f"base codec (default here: {default}; mbt2018-mean where its CompressAI zoo weights "
                             f"are in the torch hub cache, else the project's own {OWN_CODEC})")
    parser.add_argument("--quality", type=int, default=None,
                        help="quality level of the base codec (default: the codec's own, e.g. 3 for mbt2018-mean, "
                             "2 for mbt2018-mean-small)")
    if encoder:
        parser.add_argument("--encoder", default=EAGER, choices=ENCODER_PATHS,
                            help="how the analysis transform runs when encoding: eager (PyTorch), compiled (ONNX "
                                 "Runtime, float32) or int8 (ONNX Runtime, 8-bit, a little larger frames at equal "
                                 "quality: see docs/edge.md); every frame decodes exactly whatever the encoder (default: eager)")
        add_calibration_option(parser)
    add_weight_options(parser, task_models=task_models)


def add_calibration_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--calibration`` (the int8 encoder's calibration images)."""
    parser.add_argument("--calibration", metavar="SET|DIR",
                        help="int8 encoder: calibrate on centre crops of the first 8 images of this training set "
                             "or folder; evaluation images are refused (default: the bsds500-train photos of "
                             "$ICMH_DATA_DIR where present, else synthetic dead-leaves images, no data needed)")


def random_parts(args: argparse.Namespace) -> List[str]:
    """What ``args`` randomise (``codec``, ``adapters``, ``task models``), for banners and labels."""
    everything = getattr(args, "random_weights", False)
    return [name for name, flag in (("codec", "random_codec"), ("adapters", "random_adapters"),
                                    ("task models", "random_task_model"))
            if hasattr(args, flag) and (everything or getattr(args, flag))]


def codec_options(args: argparse.Namespace, codec: Optional[str] = None, quality: Optional[int] = None) -> CodecOptions:
    """Build :class:`CodecOptions` from parsed arguments (codec / quality may come from a header)."""
    parts = random_parts(args)
    return CodecOptions(
        codec=codec or args.codec, quality=quality or args.quality, codec_weights=args.codec_weights,
        random_codec="codec" in parts, random_adapters="adapters" in parts, seed=args.seed, device=args.device,
        adapters=adapter_files(getattr(args, "adapters", [])), encoder_path=getattr(args, "encoder", EAGER),
        calibration=getattr(args, "calibration", None),
    )


def add_task_model_options(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """Add ``--model`` and ``--models-dir`` (the task-model registry's names and file folder)."""
    names = ", ".join(sorted({spec.name for spec in TASK_MODELS.values()}))
    parser.add_argument("--model", action="append", default=[], metavar="TASK=NAME" if several else "NAME",
                        help=(f"task model{' per task (TASK=NAME, repeatable; a bare NAME applies to the tasks it does)' if several else ''}: "
                              f"{names} (default: the real small model of the task where its files are present, "
                              f"else the paper's torchvision model)"))
    parser.add_argument("--models-dir", type=Path, metavar="DIR",
                        help=f"folder of the real small task models (default: ${MODELS_DIR_ENV}, else ../shared/models "
                             f"beside the checkout, else ~/.cache/icmh/models)")


def model_choices(values: Sequence[str], tasks: Sequence[Task]) -> Dict[Task, str]:
    """``--model`` values (``NAME`` or ``TASK=NAME``) as task → model name for ``tasks``.

    Raises :class:`InvalidInputError` for an unknown model or task, or a model that does none of ``tasks``.
    """
    chosen: Dict[Task, str] = {}
    for value in values:
        if "=" in value:
            task_name, name = (part.strip() for part in value.split("=", 1))
            chosen[Task.parse(task_name)] = get_task_model_spec(name).name
            continue
        spec = get_task_model_spec(value.strip())
        served = [task for task in tasks if task in spec.tasks]
        if not served:
            raise InvalidInputError(f"--model {spec.name} does {', '.join(t.value for t in spec.tasks)}, "
                                    f"none of the tasks here ({', '.join(t.value for t in tasks)})")
        chosen.update({task: spec.name for task in served})
    return chosen


def model_options(args: argparse.Namespace, **settings: object) -> ModelOptions:
    """:class:`ModelOptions` from ``args`` (device, seed, random task models, models folder) and ``settings``."""
    return ModelOptions(device=args.device, seed=args.seed, random_weights="task models" in random_parts(args),
                        models_dir=getattr(args, "models_dir", None), **settings)


def adapter_files(paths: Sequence[Path]) -> list:
    """``--adapters`` values with folders expanded to the ``.safetensors`` files in them."""
    files = []
    for path in paths:
        files.extend(sorted(path.glob("*.safetensors")) if path.is_dir() else [path])
    return files


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def check_file_output(path: Path) -> None:
    """Raise :class:`InvalidInputError` if ``path`` is a directory (checked before any work)."""
    if path.is_dir():
        raise InvalidInputError(f"output {path} is a directory; give a file name")


def write_output(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (creating folders); raises :class:`InvalidInputError` on failure."""
    check_file_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {path}: {exc.strerror}") from None


def warn_random_weights(what: str, args: Optional[argparse.Namespace] = None) -> None:
    """Print the loud random-weights banner to stderr (naming the random parts of ``args``, if given)."""
    if args is not None:
        parts = random_parts(args)
        if not parts:
            return
        what = f"{what} ({', '.join(parts)})"
    print(RANDOM_WEIGHTS_WARNING.format(what=what), file=sys.stderr, flush=True)


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main``; an :class:`IcmhError` becomes one ``error: …`` line and exit status 2.

    First, freed memory is kept in the process for the next frame (:func:`icmh.memory.keep_freed_memory`).
    """
    keep_freed_memory()
    try:
        return main(argv)
    except IcmhError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
