"""frames-to-dataset: clip folders -> one table; paths or embedded bytes, instructions, frame counts."""

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from canvaslab.cli.main import app
from canvaslab.data.datasets import open_dataset
from canvaslab.data.frames import frames_to_dataset
from canvaslab.errors import InputError
from conftest import write_png


def frame(value, width=16, height=12):
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = value
    return image


def make_clips(root, counts, instructions=None, suffix=".png"):
    """Clip `name` holds frames 0..n-1 whose red channel is 10 * (frame number)."""
    for index, count in enumerate(counts):
        clip = root / f"clip{index}"
        for number in range(count):
            path = clip / f"{number}{suffix}"  # 0, 1, ..., 10: natural order differs from text order
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame(10 * number)).save(path)
        if instructions and instructions[index] is not None:
            (clip / "instruction.txt").write_text(instructions[index])
    return root


def test_paths_are_relative_to_the_output_and_frames_sort_naturally(tmp_path):
    clips = make_clips(tmp_path / "clips", [12, 12], ["first", "second"])
    written = frames_to_dataset(clips, tmp_path / "out" / "frames.parquet")
    assert (written.clips, written.frames, written.embedded) == (2, 11, False)
    table = pq.read_table(written.path)
    assert table.column("key").to_pylist() == ["clip0", "clip1"]
    assert table.column("frames").to_pylist()[0][:3] == ["../clips/clip0/0.png", "../clips/clip0/1.png", "../clips/clip0/2.png"]
    assert table.column("target").to_pylist()[1] == "../clips/clip1/11.png"
    data = open_dataset(written.path, "frames")
    example = data[0]
    assert data.frames == 11 and example.caption == "first"
    assert [int(f[0, 0, 0]) for f in example.inputs] == [10 * n for n in range(11)]
    assert int(example.image[0, 0, 0]) == 110
    assert list(tmp_path.joinpath("out").iterdir()) == [written.path], "no temporary file left behind"


def test_embedded_frames_make_a_self_contained_file(tmp_path):
    clips = make_clips(tmp_path / "clips", [3, 3, 3], ["a", "b", "c"], suffix=".jpg")
    written = frames_to_dataset(clips, tmp_path / "frames.parquet", embed=True, row_group_size=2)
    assert pq.ParquetFile(written.path).metadata.num_row_groups == 2
    moved = tmp_path / "elsewhere" / "frames.parquet"
    moved.parent.mkdir()
    shutil.move(written.path, moved)
    shutil.rmtree(clips)
    data = open_dataset(moved, "frames")
    assert data.keys() == ["clip0", "clip1", "clip2"]
    assert data.frames == 2 and abs(int(data[2].image[0, 0, 0]) - 20) <= 3  # JPEG bytes stored as they were


def test_arrow_output_opens_like_parquet(tmp_path):
    clips = make_clips(tmp_path / "clips", [4, 4], ["a", "b"])
    written = frames_to_dataset(clips, tmp_path / "frames.arrow")
    data = open_dataset(written.path, "frames")
    assert len(data) == 2 and int(data[1].image[0, 0, 0]) == 30


def test_instruction_file_wins_over_the_default_and_missing_ones_are_named(tmp_path):
    clips = make_clips(tmp_path / "clips", [2, 2, 2], ["own", None, None])
    written = frames_to_dataset(clips, tmp_path / "f.parquet", instruction="shared")
    assert pq.read_table(written.path).column("instruction").to_pylist() == ["own", "shared", "shared"]
    with pytest.raises(InputError, match="no instruction for clip\\(s\\) clip1, clip2"):
        frames_to_dataset(clips, tmp_path / "g.parquet")
    (clips / "clip0" / "instruction.txt").write_text("  \n")
    with pytest.raises(InputError, match="instruction.txt is empty"):
        frames_to_dataset(clips, tmp_path / "h.parquet", instruction="shared")


def test_unequal_frame_counts_are_refused_naming_the_offenders(tmp_path):
    clips = make_clips(tmp_path / "clips", [4, 4, 3, 4, 5], ["x"] * 5)
    with pytest.raises(InputError, match="most have 4, but clip2 \\(3\\), clip4 \\(5\\) differ"):
        frames_to_dataset(clips, tmp_path / "f.parquet")
    assert not (tmp_path / "f.parquet").exists()


@pytest.mark.parametrize(
    "setup, out, message",
    [
        (lambda p: make_clips(p, [1], ["x"]), "f.parquet", "clip 'clip0' has 1 image"),
        (lambda p: p.mkdir(), "f.parquet", "holds no clip folders"),
        (lambda p: None, "f.parquet", "is not a folder"),
        (lambda p: make_clips(p, [2], ["x"]), "f.csv", "name the output .parquet"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, setup, out, message):
    setup(tmp_path / "clips")
    with pytest.raises(InputError, match=message):
        frames_to_dataset(tmp_path / "clips", tmp_path / out)


def test_cli_writes_the_file_and_reports_errors_in_one_line(tmp_path):
    clips = make_clips(tmp_path / "clips", [3, 3], [None, None])
    out = tmp_path / "frames.parquet"
    runner = CliRunner()
    result = runner.invoke(app, ["data", "frames-to-dataset", str(clips), str(out), "--instruction", "go", "--embed"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert pq.read_table(out).column("instruction").to_pylist() == ["go", "go"]
    failed = runner.invoke(app, ["data", "frames-to-dataset", str(clips), str(tmp_path / "g.parquet")])
    assert failed.exit_code == 2
    assert failed.stderr.strip().startswith("error: no instruction for clip(s) clip0, clip1")
    assert len(failed.stderr.strip().splitlines()) == 1


def test_cli_json_summary(tmp_path):
    clips = make_clips(tmp_path / "clips", [3], ["x"])
    write_png(tmp_path / "clips" / "clip0" / "notes" / "ignored.png", frame(0))  # sub-folders are not frames
    result = CliRunner().invoke(app, ["--json", "data", "frames-to-dataset", str(clips), str(tmp_path / "f.parquet")])
    assert result.exit_code == 0, result.output
    assert '"frames": 2' in result.stdout and '"clips": 1' in result.stdout
