"""edge-client writes one frame per captured image; cloud-server decodes a folder of them."""

import json

import torch

from icmh.cloud.cli import main as cloud_main
from icmh.edge.cli import main as edge_main
from icmh.edge.sources import demo_frames
from icmh.codec.bitstream import parse_frame
from icmh.images import load_image

TINY = ["--codec", "mbt2018-mean-tiny", "--quality", "1"]


def test_demo_frames_move_and_need_nothing():
    first, second = list(demo_frames(2))
    assert first.shape == (3, 360, 640) and not torch.equal(first, second)


def test_edge_to_cloud_file_loop_decodes_every_frame(tmp_path, capsys):
    frames, decoded = tmp_path / "frames", tmp_path / "decoded"
    assert edge_main(["--demo", "--frames", "3", "--task", "human", *TINY, "--save-dir", str(frames)]) == 0
    files = sorted(frames.glob("*.icmh"))
    assert [f.name for f in files] == ["frame_000000.icmh", "frame_000001.icmh", "frame_000002.icmh"]
    (frames / "frame_000003.icmh").write_bytes(files[0].read_bytes()[:-1])  # a truncated frame
    assert cloud_main(["--input-dir", str(frames), "--output-dir", str(decoded), *TINY]) == 1
    lines = [json.loads(line) for line in (decoded / "results.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [f"frame_00000{i}.icmh" for i in range(4)]
    for line, path in zip(lines[:3], files):
        header = parse_frame(path.read_bytes()).header
        assert line["bytes"] == path.stat().st_size
        assert line["bpp"] == round(path.stat().st_size * 8 / (header.width * header.height), 6)
        assert load_image(decoded / f"{path.stem}.png").shape == (3, 360, 640)
    assert lines[3]["error"] == "BitstreamError" and "truncated" in lines[3]["message"]
    assert "decoded 3 of 4 frames" in capsys.readouterr().out


def test_image_folder_source_encodes_each_image(tmp_path, kodak_dir):
    assert edge_main(["--images", str(kodak_dir), "--frames", "2", "--task", "human", *TINY,
                      "--save-dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.icmh"))) == 2


def test_missing_sources_are_one_line_errors(tmp_path, capsys):
    for argv, message in ((["--camera", "7"], "camera 7 could not be opened"),
                          (["--images", str(tmp_path / "none")], "does not exist"),
                          (["--video", str(tmp_path / "none.mp4")], "does not exist")):
        assert edge_main([*argv, *TINY, "--save-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert not (tmp_path / "out").exists()
