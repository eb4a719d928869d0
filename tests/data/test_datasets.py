"""Training datasets: every layout opens, decodes and keeps its pairs, captions, masks and sizes straight."""

import io
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from canvaslab.data.datasets import guess_kind, open_dataset
from canvaslab.data.mini import EDITS, write_mini
from canvaslab.data.records import ItemError
from canvaslab.errors import InputError
from conftest import write_png

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

COUNT = 6


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return {d.layout: d for d in write_mini(tmp_path_factory.mktemp("mini") / "out", count=COUNT, size=32, seed=3)}


def gradient(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


# --- round trips through `data mini` --------------------------------------------------------


@pytest.mark.parametrize(
    "layout", ["inpaint-folder", "inpaint-parquet", "edit-jsonl", "edit-folder", "edit-parquet", "frames-parquet"]
)
def test_every_mini_layout_round_trips(mini, layout):
    written = mini[layout]
    data = open_dataset(written.path, written.kind)
    assert len(data) == COUNT and data.kind == written.kind
    assert guess_kind(written.path) == written.kind
    keys = data.keys()
    assert len(set(keys)) == COUNT
    sizes = data.sizes()
    for index in range(COUNT):
        example = data[index]
        height, width = example.image.shape[:2]
        assert example.image.dtype == np.uint8 and example.image.shape[2] == 3
        assert sizes[index] == (width, height), "header size must match the decoded size"
        assert example.key == keys[index] and example.caption
        assert len(example.inputs) == data.frames
        assert all(frame.shape == example.image.shape for frame in example.inputs)
    assert data.frames == {"inpaint": 0, "edit": 1, "frames": 3}[written.kind]


@pytest.mark.parametrize("layout", ["edit-jsonl", "edit-folder", "edit-parquet"])
def test_edit_pairs_stay_paired_with_their_instruction(mini, layout):
    data = open_dataset(mini[layout].path, "edit")
    for example in (data[i] for i in range(len(data))):
        # The target is exactly the operation the instruction names, applied to this item's input.
        np.testing.assert_array_equal(example.image, EDITS[example.caption](example.inputs[0]))


@pytest.mark.parametrize("layout", ["inpaint-folder", "inpaint-parquet"])
def test_inpaint_masks_are_bool_and_white_means_fill(mini, layout):
    data = open_dataset(mini[layout].path, "inpaint")
    for example in (data[i] for i in range(len(data))):
        assert example.mask is not None and example.mask.dtype == bool
        assert example.mask.shape == example.image.shape[:2]
        # The mini mask covers the first shape: a small region, holding pixels that differ from the background.
        assert 0 < example.mask.mean() < 0.5
        background = example.image[~example.mask]
        assert (example.image[example.mask] != np.median(background, axis=0)).any(axis=1).any()


def test_folder_keys_are_relative_paths_and_captions_come_from_sidecars(mini):
    data = open_dataset(mini["inpaint-folder"].path, "inpaint")
    assert data.keys()[:3] == ["shapes/000.png", "shapes/001.png", "shapes/002.png"]
    sidecar = (mini["inpaint-folder"].path / "shapes" / "001.txt").read_text().strip()
    assert data[1].caption == sidecar


def test_frames_targets_continue_the_motion(mini):
    data = open_dataset(mini["frames-parquet"].path, "frames")
    for example in (data[i] for i in range(len(data))):
        corners = [_top_left_of_shape(frame) for frame in [*example.inputs, example.image]]
        steps = {tuple(np.subtract(b, a)) for a, b in zip(corners, corners[1:])}
        assert len(steps) == 1 and steps != {(0, 0)}, f"{example.key}: {corners}"


def _top_left_of_shape(image):
    background = image[0, 0] if (image[0, 0] == image[-1, -1]).all() else image[-1, 0]
    ys, xs = np.nonzero((image != background).any(axis=2))
    return int(xs.min()), int(ys.min())


# --- image folders ----------------------------------------------------------------------------


def test_stem_matched_masks_in_masks_folder_and_sidecars(tmp_path):
    image = gradient(40, 30)
    write_png(tmp_path / "a" / "x.png", image)
    Image.fromarray(image).save(tmp_path / "a" / "y.jpg", quality=95)
    write_png(tmp_path / "z.png", image)
    box = np.zeros((30, 40), bool)
    box[5:15, 10:30] = True
    write_png(tmp_path / "masks" / "a" / "x.png", box)  # masks/<same relative path>
    write_png(tmp_path / "a" / "y_mask.png", ~box)  # <stem>_mask sidecar, other extension than the image
    data = open_dataset(tmp_path, "inpaint")
    assert data.keys() == ["a/x.png", "a/y.jpg", "z.png"]  # masks are not training images
    assert data.problems == []
    np.testing.assert_array_equal(data[0].mask, box)
    np.testing.assert_array_equal(data[1].mask, ~box)
    assert data[2].mask is None


def test_mask_of_another_size_is_resized_nearest(tmp_path):
    write_png(tmp_path / "img.png", gradient(40, 20))
    small = np.zeros((10, 20), bool)
    small[:, 10:] = True  # right half
    write_png(tmp_path / "img_mask.png", small)
    mask = open_dataset(tmp_path, "inpaint")[0].mask
    assert mask.shape == (20, 40) and mask.dtype == bool
    assert mask[:, 20:].all() and not mask[:, :20].any()


def test_captions_from_metadata_jsonl_and_sidecars(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_png(tmp_path / name, gradient(16, 16))
    (tmp_path / "b.txt").write_text("from the sidecar\n")
    rows = [{"file_name": "a.png", "text": "from text"}, {"file_name": "c.png", "caption": "from caption"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = open_dataset(tmp_path, "inpaint")
    assert [data[i].caption for i in range(3)] == ["from text", "from the sidecar", "from caption"]


def test_folder_problems_are_reported_not_raised(tmp_path):
    write_png(tmp_path / "a.png", gradient(16, 16))
    write_png(tmp_path / "masks" / "ghost.png", np.ones((16, 16), bool))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "missing.png", "text": "t"}))
    data = open_dataset(tmp_path, "inpaint")
    assert len(data) == 1
    assert {(p.kind, p.key) for p in data.problems} == {("missing-pair", "masks/ghost.png"), ("missing-pair", "missing")}


def test_exif_rotation_is_applied_to_header_sizes(tmp_path):
    image = Image.fromarray(gradient(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: 40x20 stored, 20x40 shown
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    data = open_dataset(tmp_path, "inpaint")
    assert data.sizes() == [(20, 40)]
    assert data[0].image.shape == (40, 20, 3)


def test_edit_folder_with_target_dir_and_metadata_instructions(tmp_path):
    for name in ("p1", "p2"):
        write_png(tmp_path / "input" / f"{name}.png", gradient(24, 16))
        write_png(tmp_path / "target" / f"{name}.png", gradient(24, 16, seed=1))
    rows = [{"file_name": "target/p1.png", "edit_prompt": "first"}, {"file_name": "p2.png", "text": "second"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = open_dataset(tmp_path, "edit")
    assert data.keys() == ["p1.png", "p2.png"]
    assert [data[0].caption, data[1].caption] == ["first", "second"]
    np.testing.assert_array_equal(data[0].inputs[0], gradient(24, 16))


def test_edit_size_mismatch_names_the_key(tmp_path):
    write_png(tmp_path / "input" / "odd.png", gradient(24, 16))
    write_png(tmp_path / "edited" / "odd.png", gradient(24, 20))
    (tmp_path / "edited" / "odd.txt").write_text("make it so")
    data = open_dataset(tmp_path, "edit")
    with pytest.raises(ItemError, match="'odd.png'.*24x16 but the target is 24x20") as caught:
        data[0]
    assert caught.value.kind == "size-mismatch" and isinstance(caught.value, InputError)


# --- tables -----------------------------------------------------------------------------------


def test_parquet_paths_are_relative_to_the_parquet_file(tmp_path, monkeypatch):
    write_png(tmp_path / "set" / "img" / "a.png", gradient(20, 10))
    write_png(tmp_path / "set" / "img" / "b.png", gradient(10, 20, seed=2))
    table = pa.table({"image": ["img/a.png", "img/b.png"], "text": ["first", None]})
    pq.write_table(table, tmp_path / "set" / "train.parquet")
    monkeypatch.chdir(tmp_path)  # anywhere but the parquet's folder
    data = open_dataset(tmp_path / "set" / "train.parquet", "inpaint")
    assert data.keys() == ["img/a.png", "img/b.png"]
    assert data.sizes() == [(20, 10), (10, 20)]
    np.testing.assert_array_equal(data[1].image, gradient(10, 20, seed=2))
    assert [data[0].caption, data[1].caption] == ["first", ""]


def test_parquet_folder_and_glob_read_several_files_in_row_groups(tmp_path):
    images = [gradient(16, 8 + i, seed=i) for i in range(7)]
    (tmp_path / "data").mkdir()
    for part, chunk in enumerate([images[:4], images[4:]]):
        table = pa.table({"image": [png_bytes(a) for a in chunk], "text": [f"t{part}"] * len(chunk)})
        pq.write_table(table, tmp_path / "data" / f"part-{part}.parquet", row_group_size=3)
    for source in (tmp_path / "data", str(tmp_path / "data" / "*.parquet")):
        data = open_dataset(source, "inpaint")
        assert len(data) == 7
        assert data.keys()[4] == "part-1.parquet:0"
        for index in (6, 0, 4, 3):  # out of order: row groups are found, not just streamed
            np.testing.assert_array_equal(data[index].image, images[index])


def test_column_mapping_and_its_errors(tmp_path):
    table = pa.table({"pic": [png_bytes(gradient(8, 8))], "prompt": ["hello"], "id": ["k1"]})
    pq.write_table(table, tmp_path / "t.parquet")
    data = open_dataset(tmp_path / "t.parquet", "inpaint", columns={"image": "pic", "caption": "prompt", "key": "id"})
    assert data.keys() == ["k1"] and data[0].caption == "hello"
    with pytest.raises(InputError, match="has no image column.*columns=\\{'image': NAME\\}"):
        open_dataset(tmp_path / "t.parquet", "inpaint")
    with pytest.raises(InputError, match="no column 'nope'"):
        open_dataset(tmp_path / "t.parquet", "inpaint", columns={"image": "nope"})
    with pytest.raises(InputError, match="unknown column role"):
        open_dataset(tmp_path / "t.parquet", "inpaint", columns={"image": "pic", "input": "pic"})


def test_hugging_face_image_structs_with_bytes_or_paths(tmp_path):
    write_png(tmp_path / "on-disk.png", gradient(12, 12, seed=5))
    cells = [{"bytes": png_bytes(gradient(12, 12, seed=4)), "path": "ignored.png"}, {"bytes": None, "path": "on-disk.png"}]
    pq.write_table(pa.table({"image": cells, "text": ["a", "b"]}), tmp_path / "hf.parquet")
    data = open_dataset(tmp_path / "hf.parquet", "inpaint")
    np.testing.assert_array_equal(data[0].image, gradient(12, 12, seed=4))
    np.testing.assert_array_equal(data[1].image, gradient(12, 12, seed=5))


def test_datasets_save_to_disk_layout(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"input_image": datasets.Image(), "edit_prompt": datasets.Value("string"), "edited_image": datasets.Image()}
    )
    rows = {
        "input_image": [{"bytes": png_bytes(gradient(16, 12, seed=i)), "path": None} for i in range(3)],
        "edit_prompt": ["one", "two", "three"],
        "edited_image": [{"bytes": png_bytes(255 - gradient(16, 12, seed=i)), "path": None} for i in range(3)],
    }
    dataset = datasets.Dataset.from_dict(rows, features=features)
    dataset.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(str(tmp_path / "splits"))
    for folder in ("single", "splits"):
        assert guess_kind(tmp_path / folder) == "edit"
        data = open_dataset(tmp_path / folder, "edit")
        assert len(data) == 3 and data.keys() == ["0", "1", "2"]
        example = data[2]
        assert example.caption == "three"
        np.testing.assert_array_equal(example.image, 255 - example.inputs[0])
    datasets.DatasetDict({"a": dataset, "b": dataset}).save_to_disk(str(tmp_path / "no-train"))
    with pytest.raises(InputError, match="none is 'train'"):
        open_dataset(tmp_path / "no-train", "edit")


def test_frames_rows_must_share_the_first_rows_frame_count(tmp_path):
    frame = png_bytes(gradient(8, 8))
    table = pa.table({"key": ["a", "b"], "instruction": ["x", "y"], "frames": [[frame] * 3, [frame] * 2], "target": [frame, frame]})
    pq.write_table(table, tmp_path / "f.parquet")
    data = open_dataset(tmp_path / "f.parquet", "frames")
    assert data.frames == 3 and len(data[0].inputs) == 3
    with pytest.raises(ItemError, match="'b'.*has 2 input frames but the dataset's rows have 3") as caught:
        data[1]
    assert caught.value.kind == "frame-count"


def test_frames_of_one_row_must_share_one_size(tmp_path):
    frames = [png_bytes(gradient(8, 8)), png_bytes(gradient(8, 6))]
    table = pa.table({"key": ["clip"], "instruction": ["x"], "frames": [frames], "target": [frames[0]]})
    pq.write_table(table, tmp_path / "f.parquet")
    with pytest.raises(ItemError, match="frame 2 is 8x6 but frame 1 is 8x8"):
        open_dataset(tmp_path / "f.parquet", "frames")[0]


def test_datasets_survive_pickling_for_dataloader_workers(mini):
    for layout in ("inpaint-parquet", "edit-folder", "frames-parquet"):
        data = open_dataset(mini[layout].path, mini[layout].kind)
        data[0]  # open handles and caches before pickling
        again = pickle.loads(pickle.dumps(data))
        assert again.keys() == data.keys()
        np.testing.assert_array_equal(again[COUNT - 1].image, data[COUNT - 1].image)


def test_indexing_follows_sequence_rules(mini):
    data = open_dataset(mini["edit-parquet"].path, "edit")
    np.testing.assert_array_equal(data[-1].image, data[COUNT - 1].image)
    with pytest.raises(IndexError):
        data[COUNT]


@pytest.mark.parametrize(
    "setup, kind, message",
    [
        (lambda p: None, "inpaint", "does not exist"),
        (lambda p: p.mkdir(), "sketch", "unknown dataset kind 'sketch'"),
        (lambda p: p.mkdir(), "inpaint", "no training items found"),
        (lambda p: write_png(p / "a.png", gradient(8, 8)), "frames", "frames-to-dataset"),
        (lambda p: write_png(p / "a.png", gradient(8, 8)), "edit", "not an edit dataset"),
        (lambda p: (p.mkdir(), (p / "t.csv").write_text("a")), "inpaint", "cannot read"),
    ],
)
def test_unusable_sources_are_one_clear_error(tmp_path, setup, kind, message):
    source = tmp_path / "ds"
    setup(source)
    target = source / "t.csv" if (source / "t.csv").exists() else source
    with pytest.raises(InputError, match=message):
        open_dataset(target, kind)
