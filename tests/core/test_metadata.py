"""Behaviour of canvaslab.core.metadata: A1111 infotext, and recipes embedded in PNG/JPEG/WebP."""

from __future__ import annotations

import io
import json
import logging
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from canvaslab.core.image import encode_image, save_image
from canvaslab.core.metadata import (
    ImageMetadata,
    decode_user_comment,
    embed_png_info,
    exif_for,
    format_parameters,
    parse_parameters,
    read_metadata,
)
from canvaslab.errors import InputError

SETTINGS = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Seed": 1, "Size": "512x512", "Model": "x"}
RGB = np.full((8, 8, 3), 90, np.uint8)
PROMPT = 'a "quiet" café, 画像: sunrise\nsecond line'
NEGATIVE = "blurry, lowres"
RECIPE = {"task": "inpaint", "prompt": PROMPT, "seed": 1, "nested": {"list": [1, 2.5, None, True]}}

# --- format_parameters / parse_parameters -----------------------------------------------------


def test_format_matches_a1111_layout() -> None:
    text = format_parameters("a cat, sitting", "blurry", SETTINGS)
    assert text == (
        "a cat, sitting\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: x"
    )


def test_format_omits_empty_negative_prompt_and_none_values() -> None:
    text = format_parameters("a cat", "", {**SETTINGS, "VAE": None})
    assert text == "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: x"


def test_format_quotes_awkward_values_like_a1111() -> None:
    text = format_parameters(
        "p", "", {"Steps": 1, "Lora hashes": "a: 1, b: 2", "Note": 'say "hi"', "Pad": " x"}
    )
    assert text.endswith(
        'Steps: 1, Lora hashes: "a: 1, b: 2", Note: "say \\"hi\\"", Pad: " x"'
    )


def test_format_keeps_non_ascii_unescaped_in_quotes() -> None:
    assert format_parameters("p", "", {"Model": "画像, v2"}).endswith('Model: "画像, v2"')


@pytest.mark.parametrize("key", ["", "a", "bad,key", "bad:key", " lead", "new\nline"])
def test_format_rejects_keys_a1111_cannot_read(key: str) -> None:
    with pytest.raises(ValueError, match="setting name"):
        format_parameters("p", "", {key: 1})


A1111_SAMPLE = (
    "masterpiece, best quality, (a cozy cabin:1.2) in the snowy woods,\n"
    "warm light, <lora:detail_tweaker:0.5>\n"
    "Negative prompt: lowres, bad anatomy, (worst quality:1.4),\n"
    "watermark\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, "
    "Size: 768x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75, "
    'Mask blur: 4, Lora hashes: "detail_tweaker: 7a8b9c0d1e2f", '
    'TI hashes: "easynegative: c74b4e810b03, verybad: d70463f87042", Version: v1.10.1'
)


def test_parse_a_real_looking_a1111_text() -> None:
    prompt, negative, settings = parse_parameters(A1111_SAMPLE)
    assert prompt == (
        "masterpiece, best quality, (a cozy cabin:1.2) in the snowy woods,\n"
        "warm light, <lora:detail_tweaker:0.5>"
    )
    assert negative == "lowres, bad anatomy, (worst quality:1.4),\nwatermark"
    assert settings == {
        "Steps": "28",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "6.5",
        "Seed": "1234567890",
        "Size": "768x512",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Denoising strength": "0.75",
        "Mask blur": "4",
        "Lora hashes": "detail_tweaker: 7a8b9c0d1e2f",
        "TI hashes": "easynegative: c74b4e810b03, verybad: d70463f87042",
        "Version": "v1.10.1",
    }
    assert list(settings)[:3] == ["Steps", "Sampler", "Schedule type"]


def test_parse_without_negative_prompt() -> None:
    assert parse_parameters("a cat\nSteps: 20, Seed: 1, Size: 64x64") == (
        "a cat",
        "",
        {"Steps": "20", "Seed": "1", "Size": "64x64"},
    )


def test_parse_prompt_only() -> None:
    # Fewer than three "key: value" items: A1111 reads the line as prompt, and so do we.
    assert parse_parameters("(masterpiece:1.2), cat\nstyle: photo") == (
        "(masterpiece:1.2), cat\nstyle: photo",
        "",
        {},
    )


def test_parse_tolerates_trailing_newline_and_missing_space() -> None:
    text = "cat\nNegative prompt:dog\nSteps: 2, Seed: 3, Model: m\n"
    assert parse_parameters(text) == ("cat", "dog", {"Steps": "2", "Seed": "3", "Model": "m"})


def test_parse_empty_prompt() -> None:
    text = format_parameters("", "ugly", SETTINGS)
    assert parse_parameters(text) == ("", "ugly", {k: str(v) for k, v in SETTINGS.items()})


def test_parse_leaves_malformed_quotes_alone() -> None:
    _, _, settings = parse_parameters('p\nAa: 1, Bb: "unterminated, Cc: 3, Dd: "\\q"')
    assert settings == {"Aa": "1", "Bb": '"unterminated', "Cc": "3", "Dd": '"\\q"'}


AWKWARD = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(',:"\n\r\\ \t')),
        st.sampled_from(["é", "画", "ß", "🙂", "\u2028", "\x85"]),
        st.characters(exclude_categories=("Cs",)),
    ),
    max_size=30,
)
SETTING_KEYS = st.from_regex(r"\w[\w \-/]{1,12}", fullmatch=True)
SETTING_VALUES = st.one_of(AWKWARD, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())


def _no_negative_marker(text: str) -> bool:
    return not any(line.startswith("Negative prompt:") for line in text.split("\n"))


@given(
    prompt=AWKWARD,
    negative=AWKWARD,
    settings=st.dictionaries(SETTING_KEYS, SETTING_VALUES, min_size=3, max_size=6),
)
def test_parse_inverts_format(prompt: str, negative: str, settings: dict[str, object]) -> None:
    # The format's own ambiguities: a prompt line that starts like the negative-prompt marker,
    # and fewer than three settings to recognise the settings line by.
    assume(_no_negative_marker(prompt) and _no_negative_marker(negative))
    written = {k: str(v) for k, v in settings.items() if v is not None}
    assume(len(written) >= 3)
    text = format_parameters(prompt, negative, settings)
    assert parse_parameters(text) == (prompt, negative, written)


# --- PNG --------------------------------------------------------------------------------------


def png_chunk_kinds(data: bytes) -> list[tuple[bytes, bytes]]:
    """(chunk type, keyword) for every chunk."""
    kinds, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        kinds.append((kind, body.split(b"\x00", 1)[0] if kind.endswith(b"Xt") else b""))
        offset += 12 + length
    return kinds


def test_png_round_trip(tmp_path: Path) -> None:
    path = save_image(tmp_path / "out.png", RGB, parameters=PROMPT, recipe=RECIPE)
    assert read_metadata(path) == ImageMetadata(parameters=PROMPT, recipe=RECIPE)
    assert read_metadata(path.read_bytes()) == ImageMetadata(parameters=PROMPT, recipe=RECIPE)


def test_png_text_is_what_pillow_and_a1111_read() -> None:
    data = encode_image(RGB, parameters=A1111_SAMPLE, recipe=RECIPE)
    info = Image.open(io.BytesIO(data)).info
    assert info["parameters"] == A1111_SAMPLE
    assert json.loads(info["canvaslab"]) == RECIPE


def test_png_uses_itxt_only_when_latin1_cannot_hold_the_text() -> None:
    latin = png_chunk_kinds(encode_image(RGB, parameters="café", recipe={"a": 1}))
    assert (b"tEXt", b"parameters") in latin and (b"tEXt", b"canvaslab") in latin
    wide = png_chunk_kinds(encode_image(RGB, parameters="画像", recipe={"a": "画"}))
    assert (b"iTXt", b"parameters") in wide and (b"iTXt", b"canvaslab") in wide


def test_a1111_png_without_recipe() -> None:
    info = PngInfo()
    info.add_text("parameters", A1111_SAMPLE)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG", pnginfo=info)
    assert read_metadata(buffer.getvalue()) == ImageMetadata(A1111_SAMPLE, None)


def _png_with_chunk_after_idat(chunk_kind: bytes, body: bytes) -> bytes:
    data = encode_image(RGB)
    iend = data.rindex(b"IEND") - 4
    chunk = struct.pack(">I", len(body)) + chunk_kind + body
    chunk += struct.pack(">I", zlib.crc32(chunk_kind + body))
    return data[:iend] + chunk + data[iend:]


def test_png_text_after_the_image_data_is_found() -> None:
    data = _png_with_chunk_after_idat(b"tEXt", b"parameters\x00late text")
    assert read_metadata(data).parameters == "late text"


def test_png_compressed_itxt_is_read() -> None:
    body = b"parameters\x00\x01\x00en\x00\x00" + zlib.compress("画像, 2".encode())
    assert read_metadata(_png_with_chunk_after_idat(b"iTXt", body)).parameters == "画像, 2"


def test_truncated_png_gives_what_precedes_the_cut() -> None:
    data = encode_image(RGB, parameters="kept")
    assert read_metadata(data[: data.index(b"IDAT") + 10]).parameters == "kept"


def test_bad_recipe_json_is_ignored_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    info = PngInfo()
    info.add_text("canvaslab", "{not json")
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG", pnginfo=info)
    with caplog.at_level(logging.WARNING, logger="canvaslab"):
        assert read_metadata(buffer.getvalue()) == ImageMetadata(None, None)
    assert any("recipe" in r.getMessage() for r in caplog.records)


# --- JPEG and WebP ----------------------------------------------------------------------------


def exif_entries(block: bytes) -> dict[int, tuple[int, bytes]]:
    """{tag: (type, value bytes)} of IFD0 and the Exif IFD of a big-endian EXIF block."""
    tiff = block[6:] if block.startswith(b"Exif\x00\x00") else block
    assert tiff[:4] == b"MM\x00\x2a"
    sizes = {2: 1, 4: 4, 7: 1}
    entries: dict[int, tuple[int, bytes]] = {}

    def walk(offset: int) -> None:
        (count,) = struct.unpack(">H", tiff[offset : offset + 2])
        for i in range(count):
            entry = tiff[offset + 2 + 12 * i : offset + 14 + 12 * i]
            tag, kind, n = struct.unpack(">HHI", entry[:8])
            size = sizes[kind] * n
            value = entry[8 : 8 + size] if size <= 4 else tiff[
                struct.unpack(">I", entry[8:])[0] : struct.unpack(">I", entry[8:])[0] + size
            ]
            entries[tag] = (kind, value)
            if tag == 0x8769:
                walk(struct.unpack(">I", value)[0])

    walk(struct.unpack(">I", tiff[4:8])[0])
    return entries


@pytest.mark.parametrize("suffix", ["jpg", "webp"])
def test_jpeg_and_webp_round_trip(tmp_path: Path, suffix: str) -> None:
    path = save_image(tmp_path / f"out.{suffix}", RGB, parameters=PROMPT, recipe=RECIPE)
    assert read_metadata(path) == ImageMetadata(parameters=PROMPT, recipe=RECIPE)


def test_exif_layout_is_what_piexif_and_a1111_expect() -> None:
    entries = exif_entries(exif_for(PROMPT, RECIPE))
    kind, comment = entries[0x9286]
    assert kind == 7  # UNDEFINED: piexif returns bytes only for this type
    assert comment[:8] == b"UNICODE\x00"
    assert comment[8:].decode("utf_16_be") == PROMPT  # what piexif's UserComment.load does
    kind, description = entries[0x010E]
    assert kind == 2 and description.endswith(b"\x00")
    text = description[:-1].decode("ascii")  # raises if not 7-bit
    assert text.startswith("canvaslab:") and json.loads(text[len("canvaslab:") :]) == RECIPE


def test_pillow_reads_the_user_comment_from_a_saved_jpeg() -> None:
    data = encode_image(RGB, format="jpeg", parameters=PROMPT)
    raw = Image.open(io.BytesIO(data)).getexif().get_ifd(0x8769)[0x9286]
    assert raw[:8] == b"UNICODE\x00" and raw[8:].decode("utf_16_be") == PROMPT


def test_little_endian_user_comment_from_other_tools() -> None:
    exif = Image.Exif()
    exif.endian = "<"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + PROMPT.encode("utf-16-le")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "JPEG", exif=exif.tobytes())
    assert read_metadata(buffer.getvalue()) == ImageMetadata(PROMPT, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"UNICODE\x00" + "héllo 画".encode("utf-16-be"), "héllo 画"),
        (b"UNICODE\x00" + "héllo 画".encode("utf-16-le"), "héllo 画"),
        (b"UNICODE\x00" + "画像".encode("utf-16"), "画像"),  # with a BOM
        (b"ASCII\x00\x00\x00plain text\x00", "plain text"),
        (b"\x00" * 8 + "utf-8 é".encode(), "utf-8 é"),
        (b"JIS\x00\x00\x00\x00\x00" + "画像".encode("shift_jis"), "画像"),
        ("already text", "already text"),
        (b"bare text", "bare text"),
        (tuple(b"ASCII\x00\x00\x00abc"), "abc"),
        (b"UNICODE\x00", None),
    ],
)
def test_decode_user_comment(raw: object, expected: str | None) -> None:
    assert decode_user_comment(raw) == expected  # type: ignore[arg-type]


def test_utf16_without_clue_follows_the_exif_byte_order() -> None:
    body = "画像".encode("utf-16-le")  # no zero bytes, no BOM
    assert decode_user_comment(b"UNICODE\x00" + body, byte_order="<") == "画像"


def test_camera_description_is_not_a_recipe() -> None:
    exif = Image.Exif()
    exif[0x010E] = "OLYMPUS DIGITAL CAMERA"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "JPEG", exif=exif.tobytes())
    assert read_metadata(buffer.getvalue()) == ImageMetadata(None, None)


def test_recipe_too_large_for_jpeg_is_dropped_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    big = {"blob": "x" * 70_000}
    with caplog.at_level(logging.WARNING, logger="canvaslab"):
        data = encode_image(RGB, format="jpeg", parameters="kept", recipe=big)
    assert read_metadata(data) == ImageMetadata("kept", None)
    assert any("64 KiB" in r.getMessage() for r in caplog.records)
    webp = encode_image(RGB, format="webp", parameters="kept", recipe=big)
    assert read_metadata(webp) == ImageMetadata("kept", big)


# --- no metadata, errors ----------------------------------------------------------------------


@pytest.mark.parametrize("file_format", ["png", "jpeg", "webp"])
def test_image_without_metadata(file_format: str) -> None:
    assert read_metadata(encode_image(RGB, format=file_format)) == ImageMetadata(None, None)


def test_exif_for_nothing_is_empty() -> None:
    assert exif_for(None, None) == b""


def test_recipe_must_be_a_json_object() -> None:
    with pytest.raises(ValueError):
        embed_png_info(None, ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        exif_for(None, {"nan": float("nan")})


def test_unreadable_sources(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_metadata(tmp_path / "missing.png")
    with pytest.raises(InputError, match="directory"):
        read_metadata(tmp_path)
    (tmp_path / "notes.jpg").write_text("hello")
    with pytest.raises(InputError, match="cannot read image .*notes.jpg"):
        read_metadata(tmp_path / "notes.jpg")


def test_reading_metadata_ignores_pillows_pixel_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode_image(np.zeros((40, 40, 3), np.uint8), format="jpeg", parameters="p")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_metadata(data).parameters == "p"


# --- model hashes -----------------------------------------------------------------------------


@pytest.fixture()
def hash_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh digest cache in its own folder, as on a machine that never hashed anything."""
    from canvaslab.core import metadata

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(metadata, "_hash_entries", None)
    return tmp_path / "cache" / "canvaslab" / "hashes.json"


def safetensors_file(path: Path, payload: bytes) -> Path:
    header = json.dumps({"w": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)
    return path


def test_checkpoint_and_lora_hashes_are_a1111_s(tmp_path: Path, hash_cache: Path) -> None:
    import hashlib

    from canvaslab.core.metadata import lora_sha256, model_sha256

    checkpoint = safetensors_file(tmp_path / "model.safetensors", b"weights" * 100)
    # A1111's "Model hash" is the file's sha256 (AutoV2); a .safetensors LoRA's skips the header (AutoV3).
    assert model_sha256(checkpoint) == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert lora_sha256(checkpoint) == hashlib.sha256(b"weights" * 100).hexdigest()
    assert hash_cache.is_file()


def test_folder_hash_lists_weight_files_and_reads_no_hub_blob(tmp_path: Path, hash_cache: Path) -> None:
    from canvaslab.core.metadata import model_sha256

    blob = "ab" * 32
    hub = tmp_path / "models--owner--name"
    (hub / "blobs").mkdir(parents=True)
    (hub / "blobs" / blob).write_bytes(b"not read: the name is the hash")
    snapshot = hub / "snapshots" / "rev"
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "unet" / "model.safetensors").symlink_to(hub / "blobs" / blob)
    (snapshot / "model_index.json").write_text("{}")  # not a weight file
    copy = tmp_path / "copy" / "unet"
    copy.mkdir(parents=True)
    (copy / "model.safetensors").write_bytes(b"other bytes")
    assert model_sha256(snapshot) != model_sha256(copy.parent)
    (copy / "model.safetensors").unlink()
    (copy / "model.safetensors").symlink_to(hub / "blobs" / blob)
    assert model_sha256(snapshot) == model_sha256(copy.parent)


def test_a_hashed_model_is_found_again_until_it_changes(tmp_path: Path, hash_cache: Path) -> None:
    from canvaslab.core import metadata

    checkpoint = tmp_path / "x.ckpt"
    checkpoint.write_bytes(b"one")
    digest = metadata.model_sha256(checkpoint)
    metadata._hash_entries = None  # a new process: only the cache file remembers
    assert metadata.find_by_sha256(digest[:10]) == checkpoint.resolve()
    checkpoint.write_bytes(b"two")
    assert metadata.find_by_sha256(digest[:10]) is None
    assert metadata.model_sha256(checkpoint) != digest


def test_a_recipe_nested_thousands_deep_is_ignored_not_a_crash(tmp_path, caplog):
    """A hostile PNG whose canvaslab chunk is JSON nested 100,000 deep raised RecursionError from
    read_metadata (so from `canvaslab info` and the server's png-info)."""
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 1, Sampler: patchmatch")
    info.add_text("canvaslab", "[" * 100_000 + "]" * 100_000)
    path = tmp_path / "deep.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with caplog.at_level(logging.WARNING, logger="canvaslab"):
        metadata = read_metadata(path)
    assert metadata.recipe is None and metadata.parameters.startswith("a cat")
    assert "not a JSON object" in caplog.text
