"""The real ``icmh`` console entry, run as ``python -m icmh.cli`` in child processes.

Every child runs with an empty ``TORCH_HOME``, ``ICMH_OFFLINE=1`` and an 8 GiB address
space limit (``RLIMIT_AS``, set in the child itself before it execs the CLI); its peak
resident memory is read from the kernel (``wait4``). Each child spends seconds importing
torch, so children that do not depend on each other run side by side, and the lists of
cases (the refusals, every ``info`` variant) run through ``icmh.cli.main`` in ONE child
each, one call per case with stdout / stderr captured per call; one of each list also runs
as its own ``icmh`` process.

Malformed frames are tested in ``test_malformed_frames.py``; here only what the command
decides itself (unreadable files, the codec, task and quality a header names) and one
malformed frame, to see a decoding error become one error line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

from icmh.codec.bitstream import pack_frame, parse_frame
from icmh.codec.weights import BUNDLED_DIR

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]
TINY_WEIGHTS = BUNDLED_DIR / "mbt2018-mean-tiny-1.safetensors"
RANDOM_DET = ["--codec", "mbt2018-mean", "--quality", "1", "--random-weights"]
AS_LIMIT = 8 << 30  # bytes of address space per child
MAX_RSS = 3 << 30  # bytes of resident memory a child may peak at, beyond what it inherits


def rss_bound() -> int:
    """The peak-RSS bound for a child: ``MAX_RSS`` plus this (parent) process's own peak.

    Linux carries a forked child's resident high-water mark across ``exec``, so a child of
    a pytest process that has loaded large models (the backend tests) reports at least the
    parent's resident size at fork time, whatever the child itself uses.
    """
    return MAX_RSS + resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
TIMEOUT_S = 180  # per child, and per case inside a batch child (generous: CI machines may be loaded)
BATCH_TIMEOUT_S = 600  # a whole batch child
PARALLEL = max(1, min(2, os.cpu_count() or 1))
MIN_PSNR_DB = 16.0  # the trained tiny codec reaches 21-26 dB on Kodak; a broken decode ~10 dB
BANNER = "RANDOM WEIGHTS"
BPP_LINE = re.compile(r"(\d+) bytes, ([0-9.]+) bpp, (\d+)×(\d+)")
DECODE_LINE = re.compile(r": (\d+)×(\d+), ([0-9.]+) bpp")

# The child sets its own address-space limit, then becomes ``python -m icmh.cli ARGS``
# (same pid, so wait4 sees its whole life). No preexec_fn: safe with threads around.
LAUNCHER = (
    "import os, resource, sys; limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'icmh.cli', *sys.argv[2:]])"
)

# One child, many CLI calls: ``icmh.cli.main(argv)`` per case, output captured per call.
# Anything but a return value (an escaping exception) is printed as Python would: a traceback.
BATCH = """
import contextlib, io, json, resource, sys, time, traceback
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from icmh.cli.main import main
results = []
for argv in json.load(open(sys.argv[2])):
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                    "wall_s": time.monotonic() - start,
                    "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
with open(sys.argv[3], "w") as handle:
    json.dump(results, handle)
"""


@dataclasses.dataclass
class Run:
    args: List[str]
    returncode: Optional[int]
    stdout: str
    stderr: str
    max_rss: int  # bytes
    wall_s: float
    timed_out: bool
    where: str = "own process"

    def describe(self) -> str:
        return (f"icmh {' '.join(self.args)} ({self.where})\n  exit {self.returncode}, {self.wall_s:.1f} s, "
                f"peak RSS {self.max_rss / 2**20:.0f} MiB\n  stdout: {self.stdout!r}\n  stderr: {self.stderr!r}")


@dataclasses.dataclass
class Batch:
    """Many ``icmh`` calls in one child process (see :data:`BATCH`)."""

    cases: Dict[str, List[str]]


Job = Union[List[str], Batch]


def run_many(jobs: Sequence[Job], env: Dict[str, str]) -> List[Union[Run, Dict[str, Run]]]:
    """Run every job, ``PARALLEL`` children at a time; results in input order.

    A list of arguments is one ``icmh`` process (a :class:`Run`); a :class:`Batch` is one
    child running all its cases (a dict of :class:`Run` by case name).
    """
    pending = list(enumerate(jobs))
    running: Dict[int, tuple] = {}
    results: List[object] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="icmh-cli-") as folder:
        try:
            _run_jobs(pending, running, results, Path(folder), env)
        finally:  # a failure part way: end the children this started, and only those
            for pid, entry in running.items():
                entry[3].kill()
                os.wait4(pid, 0)
                entry[3].returncode = -9
    return results  # type: ignore[return-value]


def _run_jobs(pending: list, running: dict, results: list, scratch: Path, env: Dict[str, str]) -> None:
    while pending or running:
        while pending and len(running) < PARALLEL:
            i, job = pending.pop(0)
            if isinstance(job, Batch):
                names = list(job.cases)
                (scratch / f"{i}-in.json").write_text(json.dumps([[str(a) for a in job.cases[n]] for n in names]))
                command = [sys.executable, "-c", BATCH, str(AS_LIMIT), str(scratch / f"{i}-in.json"),
                           str(scratch / f"{i}-out.json")]
                timeout, args = BATCH_TIMEOUT_S, ["<batch>", *names]
            else:
                args = [str(a) for a in job]
                command, timeout = [sys.executable, "-c", LAUNCHER, str(AS_LIMIT), *args], TIMEOUT_S
            out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            proc = subprocess.Popen(command, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            running[proc.pid] = (i, job, args, proc, out, err, time.monotonic(), timeout)
        time.sleep(0.05)  # the interval at which the children below are polled (wait4 WNOHANG)
        for pid in list(running):
            i, job, args, proc, out, err, start, timeout = running[pid]
            done_pid, status, usage = os.wait4(pid, os.WNOHANG)
            timed_out = False
            if done_pid == 0:
                if time.monotonic() - start < timeout:
                    continue
                proc.kill()
                done_pid, status, usage = os.wait4(pid, 0)
                timed_out = True
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
            out.seek(0)
            err.seek(0)
            run = Run(args, proc.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                      usage.ru_maxrss * 1024, time.monotonic() - start, timed_out)
            out.close()
            err.close()
            del running[pid]
            results[i] = run if not isinstance(job, Batch) else batch_results(job, run, scratch / f"{i}-out.json")


def batch_results(job: Batch, child: Run, path: Path) -> Dict[str, Run]:
    if child.timed_out or child.returncode != 0 or not path.is_file():
        pytest.fail("batch child failed: " + child.describe())
    results = json.loads(path.read_text())
    assert len(results) == len(job.cases)
    return {name: Run(r["argv"], r["code"], r["stdout"], r["stderr"], r["max_rss"], r["wall_s"],
                      r["wall_s"] > TIMEOUT_S, where="batch child")
            for name, r in zip(job.cases, results)}


def assert_ok(run: Run) -> None:
    assert not run.timed_out and run.returncode == 0, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    assert run.max_rss < rss_bound(), run.describe()


def assert_one_line_error(run: Run, pattern: Optional[str] = None, banner: bool = False) -> str:
    """Exit 2, exactly one stderr line ``error: ...``, no traceback, bounded time and memory.

    With ``banner``, the random-weights banner must come first, then the one error line.
    """
    assert not run.timed_out, f"did not finish within {TIMEOUT_S} s: " + run.describe()
    assert run.returncode == 2, run.describe()
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.describe()
    lines = run.stderr.splitlines()
    if banner:
        assert lines and BANNER in lines[0], run.describe()
        lines = lines[1:]
    assert len(lines) == 1 and run.stderr.endswith("\n"), run.describe()
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: "), run.describe()
    assert run.max_rss < rss_bound(), run.describe()
    if pattern is not None:
        assert re.search(pattern, lines[0], re.IGNORECASE), f"expected /{pattern}/ in: " + run.describe()
    return lines[0]


def png_array(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Dict[str, str]:
    torch_home = tmp_path_factory.mktemp("torch-home")  # empty: no zoo weights cached
    child = dict(os.environ)
    child.update({"TORCH_HOME": str(torch_home), "ICMH_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    return child


@pytest.fixture(scope="module")
def source_png(kodak_dir) -> Path:
    """The 768×512 photo every round trip starts from."""
    return kodak_dir / "kodim01.png"


@pytest.fixture(scope="module")
def adapter_files(work) -> Dict[str, Path]:
    """Two detection adapter checkpoints for the trained tiny codec (seeds 0 and 1)."""
    if not TINY_WEIGHTS.is_file():
        pytest.fail(f"bundled weights {TINY_WEIGHTS} are missing")
    from icmh.codec.adapter_checkpoint import save_adapters
    from icmh.codec.frame_codec import FrameCodec
    from icmh.tasks import Task
    from icmh.codec.weights import load_base_codec

    loaded = load_base_codec("mbt2018-mean-tiny", 1)
    files = {}
    for name, seed in (("A", 0), ("B", 1)):
        frame_codec = FrameCodec(loaded)
        frame_codec.add_random_adapters(Task.DETECTION, seed=seed)
        files[name] = work / f"detection-{name}.safetensors"
        save_adapters(files[name], frame_codec.codec, Task.DETECTION, loaded.fingerprint, random_weights=True)
    return files


INFO_CASES = [
    ("sfma", 64, 287232),
    ("sma", 64, 158976),
    ("fma", 64, 128256),
    ("sfma", 1, 5622),
    ("sfma", 32, 138240),
    ("sfma", 128, 622080),
]
BASE_PARAMS = 7028003  # mbt2018-mean quality 3


def info_args(variant: str, mid_dim: int) -> List[str]:
    return ["info", "--codec", "mbt2018-mean", "--quality", "3", "--adapter", variant, "--mid-dim", str(mid_dim),
            "--json"]


@pytest.fixture(scope="module")
def phase1(work, env, source_png, adapter_files) -> Dict[str, object]:
    """Every child that needs no frame: the encodes, missing weights, info; side by side."""
    with Image.open(source_png) as image:
        rgb = image.convert("RGB")
        Image.fromarray(np.asarray(rgb)[100:177, 200:300]).save(work / "odd.png")
        rgb.crop((0, 0, 192, 128)).save(work / "small.png")
    with Image.open(work / "odd.png") as odd:
        assert odd.size == (100, 77)
    jobs: Dict[str, Job] = {
        "info-batch": Batch({f"{v}-d{d}": info_args(v, d) for v, d, _ in INFO_CASES}),
        "encode-human": ["encode", source_png, "-o", work / "human.icmh", *TINY],
        "encode-odd": ["encode", work / "odd.png", "-o", work / "odd.icmh", *TINY],
        "encode-detection-random": ["encode", work / "small.png", "-o", work / "det-random.icmh",
                                    "--task", "detection", *RANDOM_DET],
        "encode-detection-adapters": ["encode", work / "small.png", "-o", work / "det-A.icmh",
                                      "--task", "detection", *TINY, "--adapters", adapter_files["A"]],
        "missing-weights": ["encode", source_png, "-o", work / "never.icmh", "--codec", "mbt2018-mean",
                            "--quality", "3"],
        "info-sfma-d64": info_args("sfma", 64),
    }
    assert not any(Path(env["TORCH_HOME"]).rglob("*.pth.tar"))
    return dict(zip(jobs, run_many(list(jobs.values()), env)))


# The bad input that also runs as its own ``icmh decode`` process (all run in the batch).
BAD_INPUT_OWN_PROCESS = "truncated-to-half"


@pytest.fixture(scope="module")
def phase2(work, env, phase1, adapter_files) -> Dict[str, object]:
    """Every child that decodes a frame from phase 1: round trips, refusals, bad inputs."""
    for name in ("encode-human", "encode-odd", "encode-detection-random", "encode-detection-adapters"):
        assert_ok(phase1[name])
    folder = work / "bad-inputs"
    folder.mkdir()
    cases = bad_inputs((work / "human.icmh").read_bytes(), folder)
    assert sorted(cases) == sorted(BAD_INPUTS)
    out = work / "out"
    refusals = {name: ["decode", path, "-o", out / f"{name}.png"] for name, (path, _) in cases.items()}
    refusals["detection-random-other-seed"] = ["decode", work / "det-random.icmh", "-o", out / "det-seed1.png",
                                               "--random-weights", "--seed", "1"]
    refusals["detection-no-adapters"] = ["decode", work / "det-A.icmh", "-o", out / "det-none.png"]
    jobs: Dict[str, Job] = {
        "refusal-batch": Batch(refusals),
        "decode-human": ["decode", work / "human.icmh", "-o", work / "human.png"],
        "decode-odd": ["decode", work / "odd.icmh", "-o", work / "odd-decoded.png"],
        "decode-detection-random": ["decode", work / "det-random.icmh", "-o", work / "det-random.png",
                                    "--random-weights", "--seed", "0"],
        "decode-detection-adapters-same": ["decode", work / "det-A.icmh", "-o", work / "det-A.png",
                                           "--adapters", adapter_files["A"]],
        "decode-detection-adapters-other": ["decode", work / "det-A.icmh", "-o", work / "det-B.png",
                                            "--adapters", adapter_files["B"]],
        "bad-input-own-process": ["decode", cases[BAD_INPUT_OWN_PROCESS][0], "-o", out / "own.png"],
    }
    results = dict(zip(jobs, run_many(list(jobs.values()), env)))
    results["patterns"] = {name: pattern for name, (_, pattern) in cases.items()}
    return results


# -- round trips ---------------------------------------------------------------------------
def test_encode_prints_the_bpp_of_the_whole_file(phase1, work, source_png):
    run = phase1["encode-human"]
    assert_ok(run)
    match = BPP_LINE.search(run.stdout)
    assert match, run.describe()
    n_bytes, bpp, width, height = int(match[1]), float(match[2]), int(match[3]), int(match[4])
    size = (work / "human.icmh").stat().st_size
    with Image.open(source_png) as image:
        assert (width, height) == image.size
    assert n_bytes == size > 0
    assert bpp == pytest.approx(size * 8 / (height * width), abs=5e-5)
    assert "mbt2018-mean-tiny" in run.stdout and "task human" in run.stdout
    assert BANNER not in run.stderr
    parse_frame((work / "human.icmh").read_bytes())  # a well-formed frame


def test_encode_decode_round_trip_restores_the_original_size_and_content(phase2, work, source_png):
    run = phase2["decode-human"]
    assert_ok(run)
    original, decoded = png_array(source_png), png_array(work / "human.png")
    assert decoded.shape == original.shape
    size = (work / "human.icmh").stat().st_size
    match = DECODE_LINE.search(run.stdout)
    assert match, run.describe()
    width, height, bpp = int(match[1]), int(match[2]), float(match[3])
    assert (height, width) == original.shape[:2]
    assert bpp == pytest.approx(size * 8 / (height * width), abs=5e-5)
    quality = psnr(original, decoded)
    assert MIN_PSNR_DB < quality < math.inf, f"PSNR {quality:.2f} dB"


def test_odd_size_image_decodes_back_to_exactly_that_size(phase1, phase2, work):
    assert_ok(phase1["encode-odd"])
    assert_ok(phase2["decode-odd"])
    assert "100×77" in phase1["encode-odd"].stdout
    with Image.open(work / "odd-decoded.png") as image:
        assert image.size == (100, 77)
    quality = psnr(png_array(work / "odd.png"), png_array(work / "odd-decoded.png"))
    assert quality > MIN_PSNR_DB - 3, f"PSNR {quality:.2f} dB"


def test_detection_with_random_weights_round_trips_and_prints_the_banner(phase1, phase2, work):
    for run in (phase1["encode-detection-random"], phase2["decode-detection-random"]):
        assert_ok(run)
        banner = [line for line in run.stderr.splitlines() if BANNER in line]
        assert len(banner) == 1, run.describe()
        assert "random weights, seed 0" in run.stdout and "task detection" in run.stdout, run.describe()
    header = parse_frame((work / "det-random.icmh").read_bytes()).header
    assert header.task_id == 1 and any(header.adapter_hash) and header.quality == 1
    with Image.open(work / "det-random.png") as image:
        assert image.size == (192, 128)


def test_detection_with_adapter_files_round_trips(phase1, phase2, work):
    assert_ok(phase2["decode-detection-adapters-same"])
    assert "task detection" in phase2["decode-detection-adapters-same"].stdout
    assert BANNER not in phase1["encode-detection-adapters"].stderr
    with Image.open(work / "det-A.png") as image:
        assert image.size == (192, 128)


def test_decoding_with_other_adapters_is_refused(phase2, work):
    line = assert_one_line_error(phase2["decode-detection-adapters-other"], r"adapters")
    assert "detection" in line
    assert not (work / "det-B.png").exists()


def test_decoding_a_task_frame_without_adapters_is_refused_naming_the_flags(phase2, work):
    line = assert_one_line_error(phase2["refusal-batch"]["detection-no-adapters"], r"--adapters")
    assert "--random-adapters" in line
    assert not (work / "out" / "det-none.png").exists()


def test_decoding_with_other_random_base_weights_is_refused(phase2, work):
    assert_one_line_error(phase2["refusal-batch"]["detection-random-other-seed"], r"weights", banner=True)
    assert not (work / "out" / "det-seed1.png").exists()


# -- missing weights -----------------------------------------------------------------------
def test_missing_pretrained_weights_give_one_line_naming_the_file_and_the_flags(phase1, work):
    line = assert_one_line_error(phase1["missing-weights"])
    assert "mbt2018-mean-3-723404a8.pth.tar" in line
    assert "--codec-weights" in line and "--random-weights" in line
    assert not (work / "never.icmh").exists()


# -- info ----------------------------------------------------------------------------------
def check_info(run: Run, variant: str, mid_dim: int, adapter_params: int) -> None:
    assert_ok(run)
    report = json.loads(run.stdout)
    assert report["codec"] == "mbt2018-mean" and report["quality"] == 3
    assert report["adapter"] == variant and report["mid_dim"] == mid_dim
    assert report["base_params"] == BASE_PARAMS
    assert report["adapter_params"] == adapter_params


def test_info_json_in_its_own_process_reports_parameter_counts(phase1):
    check_info(phase1["info-sfma-d64"], "sfma", 64, 287232)


@pytest.mark.parametrize("variant,mid_dim,adapter_params", INFO_CASES, ids=[f"{v}-d{d}" for v, d, _ in INFO_CASES])
def test_info_json_reports_parameter_counts(phase1, variant, mid_dim, adapter_params):
    check_info(phase1["info-batch"][f"{variant}-d{mid_dim}"], variant, mid_dim, adapter_params)


# -- bad inputs ------------------------------------------------------------------------------
def bad_inputs(frame: bytes, folder: Path) -> Dict[str, tuple]:
    """What ``icmh decode`` refuses itself, and one malformed frame: name -> (input path, pattern of the
    error line). The header names a codec, task or quality the command looks up before decoding."""
    def repacked(**changes) -> bytes:
        parsed = parse_frame(frame)
        return pack_frame(dataclasses.replace(parsed.header, **changes), list(parsed.strings))

    contents = {
        "empty-file": (b"", r"truncated"),
        "truncated-to-half": (frame[: len(frame) // 2], r"truncated|length"),
        "unknown-codec-id": (repacked(codec_id=200), r"codec id 200"),
        "unknown-task-id": (repacked(task_id=9), r"task id 9"),
        "unknown-quality": (repacked(quality=9), r"quality 9"),
    }
    cases = {}
    for name, (data, pattern) in contents.items():
        path = folder / f"{name}.icmh"
        path.write_bytes(data)
        cases[name] = (path, pattern)
    cases["nonexistent-file"] = (folder / "does-not-exist.icmh", r"does-not-exist")
    cases["directory-as-input"] = (folder, r"cannot read|directory")
    return cases


BAD_INPUTS = ["empty-file", "truncated-to-half", "unknown-codec-id", "unknown-task-id", "unknown-quality",
              "nonexistent-file", "directory-as-input"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_decoding_a_bad_input_fails_with_one_error_line(phase2, work, case):
    assert_one_line_error(phase2["refusal-batch"][case], phase2["patterns"][case])
    assert not (work / "out" / f"{case}.png").exists()


def test_decode_process_given_a_malformed_frame_exits_2_with_one_error_line(phase2, work):
    assert_one_line_error(phase2["bad-input-own-process"], phase2["patterns"][BAD_INPUT_OWN_PROCESS])
    assert not (work / "out" / "own.png").exists()


# -- unusable outputs and arguments are refused before any work, in one line ------------------
@pytest.mark.parametrize("argv,fragment", [
    (["encode", "{png}", "-o", "{tmp}", "--codec", "mbt2018-mean-tiny", "--quality", "1"], "is a directory"),
    (["decode", "{frame}", "-o", "{tmp}/out.xyz"], "no image suffix"),
    (["decode", "{frame}", "-o", "{tmp}"], "is a directory"),
    (["encode", "{png}", "-o", "{tmp}/a.icmh", "--codec", "mbt2018-mean-tiny", "--quality", "1",
      "--codec-weights", "{png}"], "pickled objects are refused"),
])
def test_unusable_outputs_and_inputs_end_in_one_error_line(capsys, tmp_path, argv, fragment):
    from icmh.codec.frame_codec import FrameCodec
    from icmh.images import save_image
    from icmh.tasks import Task
    from icmh.codec.weights import load_base_codec
    from support import smooth_image

    png, frame = tmp_path / "in.png", tmp_path / "in.icmh"
    image = smooth_image(40, 50)
    save_image(image, png)
    frame.write_bytes(FrameCodec(load_base_codec("mbt2018-mean-tiny", 1)).encode([image], Task.HUMAN)[0].data)
    args = [a.format(png=png, frame=frame, tmp=tmp_path) for a in argv]
    from icmh.cli.main import main

    status = main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines
    assert not (tmp_path / "out.xyz").exists()


def test_zero_adapter_bottleneck_is_a_usage_error(capsys):
    from icmh.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["info", "--mid-dim", "0"])
    assert info.value.code == 2
    assert "--mid-dim: must be >= 1" in capsys.readouterr().err
