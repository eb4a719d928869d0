"""Recipes embedded in output images, readable by canvaslab and by the AUTOMATIC1111 ecosystem.

Every image canvaslab saves carries two things:

* ``parameters``: the A1111 "infotext" (prompt, ``Negative prompt: ...``, ``Steps: 20, Seed: 1, ...``),
  so A1111, IOPaint, Civitai and other readers of that convention show what made the image;
* the *recipe*: canvaslab's complete request as a JSON object, opaque to this module, so the image
  can be reproduced exactly.

Where they live:

* PNG: text chunk ``parameters`` (as A1111 writes it) and text chunk ``canvaslab`` (the JSON). Each
  is ``tEXt`` when the text is latin-1 and ``iTXt`` (UTF-8) otherwise.
* JPEG and WebP: EXIF, big-endian like piexif (which A1111 uses) writes it.

  - ``UserComment`` (0x9286, in the Exif sub-IFD, type UNDEFINED) = ``b"UNICODE\\0"`` + UTF-16BE
    text: the EXIF character-code prefix followed by what piexif's ``UserComment.dump(...,
    encoding="unicode")`` writes and A1111's reader decodes.
  - ``ImageDescription`` (0x010E, IFD0, ASCII) = ``"canvaslab:"`` + the JSON with non-ASCII escaped
    (``\\uXXXX``), so it is valid 7-bit TIFF ASCII. The prefix follows ComfyUI's ``key:json`` EXIF
    convention and keeps a camera's or another tool's description from being taken for a recipe.
    XMP was the alternative; it needs an XML writer and parser for no gain here.

  JPEG puts all EXIF in one 64 KiB segment: `canvaslab.core.image.encode_image` drops the recipe
  (and, if still too large, the parameters) with a notice rather than fail.

The EXIF block is written here by hand (`exif_for`) rather than through ``PIL.Image.Exif``: Pillow
types an unregistered bytes tag such as UserComment as BYTE, which piexif then reads as a tuple of
ints and A1111 fails on; the EXIF spec requires UNDEFINED. Reading uses Pillow's EXIF API.

Models are named the way A1111 names them, never by their path: a file name and a short hash
(`model_sha256`, `lora_sha256`; see "model hashes" below).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Union

from PIL import ExifTags, Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from canvaslab.core.notices import notice
from canvaslab.errors import InputError

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "canvaslab"
RECIPE_PREFIX = "canvaslab:"
NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

MetadataSource = Union[str, "os.PathLike[str]", bytes]

# One "Key: value" item of A1111's settings line; the same expression A1111 parses with, so both
# read a line identically. A value is a JSON string or anything up to the next comma.
_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SETTING_KEY = re.compile(r"\w[\w \-/]+")
# A1111 treats the last line as settings only when it holds at least this many items; fewer and
# the line belongs to the prompt ("masterpiece: 1.2" is a prompt, not a setting).
_MIN_SETTINGS_ON_LINE = 3

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Text chunks larger than this are not recipes; the cap also bounds zlib decompression.
_MAX_TEXT_BYTES = 16 * 1024 * 1024

_USER_COMMENT_UNICODE = b"UNICODE\x00"
_USER_COMMENT_ASCII = b"ASCII\x00\x00\x00"
_USER_COMMENT_JIS = b"JIS\x00\x00\x00\x00\x00"
_USER_COMMENT_UNDEFINED = b"\x00" * 8

_TIFF_ASCII = 2
_TIFF_LONG = 4
_TIFF_UNDEFINED = 7


@dataclass
class ImageMetadata:
    """What an image says about how it was made; both None when it says nothing."""

    parameters: str | None
    recipe: dict[str, Any] | None


# --- A1111 infotext -------------------------------------------------------------------------


def format_parameters(prompt: str, negative_prompt: str, settings: Mapping[str, object]) -> str:
    """Lay out a recipe the way A1111 does, so tools of that ecosystem can read it.

    ``prompt`` (any number of lines), then ``Negative prompt: ...`` when there is one, then one
    line ``Steps: 20, Sampler: Euler a, ...`` with the settings in the given order. ``None`` values
    are left out; a value that would break the line is JSON-quoted, as A1111 quotes it. A1111 (and
    `parse_parameters`) only recognise the settings line when it has at least three entries.
    """
    items = [
        f"{_checked_key(key)}: {_quote(str(value))}"
        for key, value in settings.items()
        if value is not None
    ]
    text = prompt
    if negative_prompt:
        text += f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}"
    if items:
        text += "\n" + ", ".join(items)
    return text


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Split A1111 infotext into (prompt, negative prompt, settings).

    Reads A1111's own output and `format_parameters`' alike. Settings values stay strings (A1111's
    own reader also splits ``Size: 512x512`` into ``Size-1``/``Size-2``; this one does not).
    Unlike A1111, whitespace inside the prompts is kept, so a prompt survives a round trip.
    """
    lines = text.rstrip().split("\n")
    settings: dict[str, str] = {}
    items = _SETTING.findall(lines[-1])
    if len(items) >= _MIN_SETTINGS_ON_LINE:
        lines.pop()
        settings = {key: _unquote(value) for key, value in items}
    prompt, negative = _split_prompts(lines)
    return prompt, negative, settings


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is not None:
            negative_lines.append(line)
        elif line.startswith(NEGATIVE_PROMPT_PREFIX):
            # A1111 writes "Negative prompt: text": drop the prefix and its one space only.
            rest = line[len(NEGATIVE_PROMPT_PREFIX) :]
            negative_lines = [rest[1:] if rest.startswith(" ") else rest]
        else:
            prompt_lines.append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines or [])


def _checked_key(key: str) -> str:
    if not isinstance(key, str) or not _SETTING_KEY.fullmatch(key):
        raise ValueError(
            f"setting name {key!r} cannot be written in A1111's format: use at least two "
            "characters, starting with a letter or digit, of letters, digits, spaces, '-' and '/'"
        )
    return key


def _quote(value: str) -> str:
    # A1111 quotes values with "," ":" or newlines; quotes and edge whitespace are added because
    # they would otherwise not survive its parser (a value like "x" would be unquoted to x).
    needs_quotes = any(ch in value for ch in ',:"\n\r') or value != value.strip()
    return json.dumps(value, ensure_ascii=False) if needs_quotes else value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


# --- writing ----------------------------------------------------------------------------------


def recipe_json(recipe: Mapping[str, Any], *, ascii_only: bool = False) -> str:
    """The recipe as compact JSON; ValueError when it is not a JSON-serialisable object."""
    if not isinstance(recipe, Mapping):
        raise ValueError(f"a recipe must be a dict, not {type(recipe).__name__}")
    try:
        return json.dumps(recipe, ensure_ascii=ascii_only, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the recipe cannot be written as JSON: {exc}") from exc


def embed_png_info(parameters: str | None, recipe: Mapping[str, Any] | None) -> PngInfo:
    """PNG text chunks for the infotext and the recipe (iTXt when the text is not latin-1)."""
    info = PngInfo()
    # PngInfo.add_text writes tEXt and switches to iTXt by itself when latin-1 cannot hold the text.
    if parameters is not None:
        info.add_text(PARAMETERS_KEY, parameters)
    if recipe is not None:
        info.add_text(RECIPE_KEY, recipe_json(recipe))
    return info


def exif_for(parameters: str | None, recipe: Mapping[str, Any] | None) -> bytes:
    """The EXIF block (``b"Exif\\0\\0"`` + big-endian TIFF) for JPEG/WebP; b"" when both are None.

    Pass it as ``exif=`` to Pillow's JPEG or WebP writer.
    """
    ifd0: list[tuple[int, int, bytes]] = []
    if recipe is not None:
        description = (RECIPE_PREFIX + recipe_json(recipe, ascii_only=True)).encode("ascii")
        ifd0.append((ExifTags.Base.ImageDescription, _TIFF_ASCII, description + b"\x00"))
    exif_ifd: list[tuple[int, int, bytes]] = []
    if parameters is not None:
        comment = _USER_COMMENT_UNICODE + parameters.encode("utf-16-be")
        exif_ifd.append((ExifTags.Base.UserComment, _TIFF_UNDEFINED, comment))
    if not ifd0 and not exif_ifd:
        return b""
    return b"Exif\x00\x00" + _tiff_bytes(ifd0, exif_ifd)


def _tiff_bytes(ifd0: list[tuple[int, int, bytes]], exif_ifd: list[tuple[int, int, bytes]]) -> bytes:
    header_size = 8
    if exif_ifd:
        # The pointer's value (the Exif IFD's offset) only depends on IFD0's size, which the
        # placeholder already has.
        placeholder = (ExifTags.IFD.Exif, _TIFF_LONG, b"\x00\x00\x00\x00")
        exif_offset = header_size + len(_ifd_bytes([*ifd0, placeholder], header_size))
        ifd0 = [*ifd0, (ExifTags.IFD.Exif, _TIFF_LONG, struct.pack(">I", exif_offset))]
    body = _ifd_bytes(ifd0, header_size)
    if exif_ifd:
        body += _ifd_bytes(exif_ifd, header_size + len(body))
    return b"MM\x00\x2a" + struct.pack(">I", header_size) + body


def _ifd_bytes(entries: list[tuple[int, int, bytes]], offset: int) -> bytes:
    """One IFD at `offset` (from the TIFF header): entries, then the values too long to inline."""
    entries = sorted(entries)  # TIFF requires ascending tags
    data_offset = offset + 2 + 12 * len(entries) + 4
    table = struct.pack(">H", len(entries))
    data = b""
    for tag, kind, payload in entries:
        # ASCII/UNDEFINED counts are bytes; the only LONG written is a single pointer.
        count = 1 if kind == _TIFF_LONG else len(payload)
        if len(payload) <= 4:
            table += struct.pack(">HHI4s", tag, kind, count, payload.ljust(4, b"\x00"))
        else:
            table += struct.pack(">HHII", tag, kind, count, data_offset + len(data))
            data += payload + b"\x00" * (len(payload) % 2)  # values start on word boundaries
    return table + struct.pack(">I", 0) + data  # 0: no next IFD


# --- reading ----------------------------------------------------------------------------------


def read_metadata(source: MetadataSource) -> ImageMetadata:
    """The infotext and recipe of a PNG (canvaslab's or A1111's), JPEG or WebP.

    An image without them gives ``ImageMetadata(None, None)``; a file that cannot be read as an
    image raises InputError. Pixels are never decoded, so this is cheap even for huge images.
    """
    name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    try:
        with _open_binary(source) as fp:
            if fp.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE:
                texts, exif_block = _png_chunks(fp)
                metadata = _from_texts(texts, name)
                if metadata.parameters is None and exif_block:
                    metadata.parameters = _exif_metadata(_load_exif(exif_block), name).parameters
                return metadata
            fp.seek(0)
            return _read_with_pillow(fp, name)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"cannot read image '{name}': no such file") from None
    except IsADirectoryError:
        raise InputError(f"cannot read image '{name}': it is a directory") from None
    except PermissionError:
        raise InputError(f"cannot read image '{name}': permission denied") from None
    except UnidentifiedImageError:
        raise InputError(
            f"cannot read image '{name}': not an image, or a format Pillow cannot read"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InputError(f"cannot read image '{name}': {_one_line(exc)}") from exc


def _open_binary(source: MetadataSource) -> IO[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    if os.path.isdir(source):
        raise IsADirectoryError(source)
    return open(source, "rb")  # noqa: SIM115 - closed by the caller's with-block


def _read_with_pillow(fp: IO[bytes], name: str) -> ImageMetadata:
    # Imported here: image.py imports this module at load time.
    from canvaslab.core.image import pixel_limit

    # Only the header is parsed (no pixels decoded), so no size limit applies.
    with pixel_limit(None), Image.open(fp) as im:
        texts = {key: value for key, value in im.info.items() if isinstance(value, str)}
        metadata = _from_texts(texts, name)
        exif_metadata = _exif_metadata(im.getexif(), name)
    return ImageMetadata(
        parameters=_first_set(metadata.parameters, exif_metadata.parameters),
        recipe=_first_set(metadata.recipe, exif_metadata.recipe),
    )


def _first_set(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _from_texts(texts: Mapping[str, str], name: str) -> ImageMetadata:
    raw_recipe = texts.get(RECIPE_KEY)
    return ImageMetadata(
        parameters=texts.get(PARAMETERS_KEY),
        recipe=None if raw_recipe is None else _parse_recipe(raw_recipe, name),
    )


def _parse_recipe(text: str, name: str) -> dict[str, Any] | None:
    try:
        recipe = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep (a hostile file)
        recipe = None
    if not isinstance(recipe, dict):
        notice(f"image '{name}' carries a canvaslab recipe that is not a JSON object: ignored it")
        return None
    return recipe


def _load_exif(block: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(block)
    return exif


def _exif_metadata(exif: Image.Exif, name: str) -> ImageMetadata:
    comment = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    parameters = None
    if comment is not None:
        parameters = decode_user_comment(comment, byte_order=getattr(exif, "endian", None) or ">")
    description = exif.get(ExifTags.Base.ImageDescription)
    if isinstance(description, bytes):
        description = description.decode("latin-1")
    recipe = None
    if isinstance(description, str) and description.startswith(RECIPE_PREFIX):
        recipe = _parse_recipe(description[len(RECIPE_PREFIX) :].rstrip("\x00"), name)
    return ImageMetadata(parameters=parameters, recipe=recipe)


def decode_user_comment(raw: bytes | str | tuple[int, ...], *, byte_order: str = ">") -> str | None:
    """Text of an EXIF UserComment (8-byte character-code prefix + text); None when empty.

    ``UNICODE`` text is UTF-16 in either byte order: piexif (A1111) writes big-endian whatever the
    file's byte order, other tools use the file's; a BOM, else where the zero bytes of mostly-ASCII
    text fall, decides, else ``byte_order`` (the EXIF block's, ">" or "<").
    """
    if isinstance(raw, str):
        return raw.rstrip("\x00") or None
    data = bytes(raw)
    prefix, body = data[:8], data[8:]
    if prefix == _USER_COMMENT_UNICODE:
        text = _decode_utf16(body, byte_order)
    elif prefix == _USER_COMMENT_JIS:
        text = body.decode("shift_jis", errors="replace")
    elif prefix in (_USER_COMMENT_ASCII, _USER_COMMENT_UNDEFINED):
        text = _decode_8bit(body)
    else:
        text = _decode_8bit(data)  # no prefix: some writers store bare (UTF-8) text
    return text.rstrip("\x00") or None


def _decode_utf16(body: bytes, byte_order: str) -> str:
    body = body[: len(body) // 2 * 2]
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16", errors="replace")
    zeros_first = body[0::2].count(0)
    zeros_second = body[1::2].count(0)
    if zeros_first != zeros_second:
        big_endian = zeros_first > zeros_second
    else:
        big_endian = byte_order != "<"
    return body.decode("utf-16-be" if big_endian else "utf-16-le", errors="replace")


def _decode_8bit(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("latin-1")


# --- PNG chunks -------------------------------------------------------------------------------


def _png_chunks(fp: IO[bytes]) -> tuple[dict[str, str], bytes | None]:
    """Text chunks (first of each keyword) and the eXIf block; `fp` is just past the signature.

    Walking the chunks ourselves finds text written after the image data too, which Pillow only
    reports after decoding the whole image. A truncated file yields what was found before the cut.
    """
    texts: dict[str, str] = {}
    exif_block = None
    while True:
        header = fp.read(8)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            break
        if kind not in (b"tEXt", b"zTXt", b"iTXt", b"eXIf") or length > _MAX_TEXT_BYTES:
            fp.seek(length + 4, io.SEEK_CUR)  # data and CRC
            continue
        data = fp.read(length)
        if len(data) < length:
            break
        fp.seek(4, io.SEEK_CUR)
        if kind == b"eXIf":
            exif_block = exif_block or data
            continue
        try:
            keyword, text = _png_text(kind, data)
        except (ValueError, IndexError, zlib.error):
            continue  # one damaged chunk does not hide the others
        texts.setdefault(keyword, text)
    return texts, exif_block


def _png_text(kind: bytes, data: bytes) -> tuple[str, str]:
    raw_keyword, _, rest = data.partition(b"\x00")
    keyword = raw_keyword.decode("latin-1")
    if kind == b"tEXt":
        return keyword, rest.decode("latin-1")
    if kind == b"zTXt":
        return keyword, _inflate(rest[1:]).decode("latin-1")
    compressed = rest[0] == 1
    _language, _, rest = rest[2:].partition(b"\x00")
    _translated_keyword, _, text = rest.partition(b"\x00")
    if compressed:
        text = _inflate(text)
    return keyword, text.decode("utf-8", errors="replace")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    text = inflater.decompress(data, _MAX_TEXT_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError("text chunk too large")
    return text


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# --- model hashes -----------------------------------------------------------------------------
#
# A1111 writes "Model: <file name without extension>, Model hash: <first 10 hex of the file's
# sha256>" (Civitai's AutoV2) and, for LoRAs, 'Lora hashes: "<name>: <first 12 hex>"' where a
# .safetensors file is hashed without its JSON header (the "addnet" hash, Civitai's AutoV3). Folders
# (diffusers pipelines, Show-o bundles) have no A1111 hash; theirs is the sha256 of a manifest of
# "<relative path>\t<sha256>" lines, one per weight file. In a Hugging Face snapshot the weights are
# links to blobs named by their sha256, so nothing is read there. Hashing a multi-GB checkpoint takes
# seconds, so digests are kept (as A1111 keeps its cache.json) in `hash_cache_path()`, keyed by path,
# size and modification time; the same file lets `find_by_sha256` find a model again.

MODEL_HASH_LENGTH = 10  # A1111's "Model hash"
LORA_HASH_LENGTH = 12  # A1111's "Lora hashes"
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
_SHA256_NAME = re.compile(r"[0-9a-f]{64}")
_NOTICE_ABOVE_BYTES = 256 * 1024 * 1024
_hash_lock = threading.Lock()
_hash_entries: dict[str, dict[str, Any]] | None = None


def hash_cache_path() -> Path:
    """Where digests are kept: $XDG_CACHE_HOME (or ~/.cache)/canvaslab/hashes.json."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "canvaslab" / "hashes.json"


def model_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 naming a checkpoint file (of the whole file) or a model folder (of its manifest)."""
    target = Path(path).expanduser().resolve()
    if not target.is_dir():
        return _cached_sha256(target, "file", _file_sha256)
    # Walking a model folder for every image costs about a millisecond: remember its digest until the
    # folder or one of its component folders changes (files are written by rename, which touches them).
    stamp = (target.stat().st_mtime_ns,
             *sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(target) if e.is_dir() and not e.name.startswith(".")))
    known = _folder_digests.get(str(target))
    if known is not None and known[0] == stamp:
        return known[1]
    digest = _folder_sha256(target)
    _folder_digests[str(target)] = (stamp, digest)
    return digest


_folder_digests: dict[str, tuple[tuple, str]] = {}  # folder -> (its stamp, digest) in this process


def lora_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 naming a LoRA: A1111's header-less hash for .safetensors, else as `model_sha256`."""
    target = Path(path).expanduser().resolve()
    if target.is_file() and target.suffix == ".safetensors":
        return _cached_sha256(target, "addnet", _safetensors_data_sha256)
    return model_sha256(target)


def find_by_sha256(digest: str) -> Path | None:
    """A file or folder hashed on this machine before, still unchanged, whose sha256 starts with `digest`."""
    digest = digest.lower()
    if len(digest) < MODEL_HASH_LENGTH:
        return None
    for key, entry in sorted(_load_hash_entries().items()):
        kind, _, name = key.partition(":")
        path = Path(name)
        if not str(entry.get("sha256", "")).startswith(digest):
            continue
        try:
            if kind == "folder" and path.is_dir() and _folder_sha256(path).startswith(digest):
                return path
            if kind in ("file", "addnet") and _unchanged(path, entry):
                return path
        except OSError:
            continue
    return None


def _folder_sha256(folder: Path) -> str:
    lines = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(WEIGHT_SUFFIXES):
                continue
            file = Path(dirpath) / name
            blob = os.path.basename(os.readlink(file)) if file.is_symlink() else ""
            digest = blob if _SHA256_NAME.fullmatch(blob) else _cached_sha256(file.resolve(), "file", _file_sha256)
            lines.append(f"{file.relative_to(folder).as_posix()}\t{digest}\n")
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()
    if _remembered_folders.get(str(folder)) != digest:  # write the cache file only when something changed
        _remember(f"folder:{folder}", {"sha256": digest})
        _remembered_folders[str(folder)] = digest
    return digest


_remembered_folders: dict[str, str] = {}  # folder -> digest this process has written to the cache file


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return _sha256_of_rest(file)


def _safetensors_data_sha256(path: Path) -> str:
    """sha256 of a .safetensors file after its header (8-byte length + JSON), as A1111 hashes LoRAs."""
    with open(path, "rb") as file:
        header_length = struct.unpack("<Q", file.read(8))[0]
        file.seek(8 + header_length)
        return _sha256_of_rest(file)


def _sha256_of_rest(file: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def _cached_sha256(path: Path, kind: str, compute: Callable[[Path], str]) -> str:
    key = f"{kind}:{path}"
    entry = _load_hash_entries().get(key)
    if entry is not None and _unchanged(path, entry):
        return str(entry["sha256"])
    stat = path.stat()
    if stat.st_size > _NOTICE_ABOVE_BYTES:
        notice(f"computing the sha256 of {path.name} once, to name it in the outputs (kept in {hash_cache_path()})")
    digest = compute(path)
    _remember(key, {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return digest


def _unchanged(path: Path, entry: Mapping[str, Any]) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    return entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns


def _load_hash_entries() -> dict[str, dict[str, Any]]:
    global _hash_entries
    with _hash_lock:
        if _hash_entries is None:
            _hash_entries = _read_hash_file()
        return _hash_entries


def _read_hash_file() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(hash_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _remember(key: str, entry: dict[str, Any]) -> None:
    """Keep a digest in memory and in the cache file (merged with what other processes wrote meanwhile)."""
    from canvaslab.core.image import atomic_write_bytes  # image.py imports this module at load time

    entries = _load_hash_entries()
    with _hash_lock:
        if entries.get(key) == entry:
            return
        entries[key] = entry
        merged = {**_read_hash_file(), key: entry}
        try:
            atomic_write_bytes(hash_cache_path(), json.dumps(merged, indent=1, sort_keys=True).encode())
        except (OSError, InputError):
            pass  # an unwritable cache only costs hashing again next time
