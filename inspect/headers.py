"""Image size and completeness from a file's header, without decoding it.

OpenCV allocates the whole frame as soon as it has read a header, and decodes a cut JPEG or PNG with the missing
part grey. These pure functions read only the bytes that describe the image, so a run can refuse a 20000 x 20000
LZW TIFF (8 MB on disk, 2.4 GB decoded) before it costs memory, and a half-copied file before it is inspected.

Every format this OpenCV build decodes is covered: JPEG, PNG, TIFF and BigTIFF, BMP, WebP, GIF, PNM/PAM/PFM, Sun
raster, Radiance HDR, JPEG 2000 and AVIF. Completeness is checked where the format makes it cheap: a JPEG must reach
its end-of-image marker (found by walking its segments, so an EXIF thumbnail's marker does not count, and bytes after
the marker are only counted, not refused), a PNG its ``IEND`` chunk, a TIFF's strips or tiles must lie inside the
file, a WebP must hold its RIFF size and an uncompressed BMP its pixel rows.

Example:
    >>> header = read_header(open("part.tif", "rb").read())     # doctest: +SKIP
    >>> header.format, header.size, header.incomplete
    ('TIFF', (20000, 20000), None)
"""

from __future__ import annotations

import itertools
import re
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Header:
    """What a file's header says about its image.

    Attributes:
        format: the format's usual name (``JPEG``, ``TIFF``, ...).
        size: ``(width, height)``, or None when the header is cut or corrupt.
        incomplete: what is missing when the file ends before its image does, else None (also when unchecked).
        trailing: bytes after the end of the image (JPEG and PNG), which decoders ignore.
    """

    format: str
    size: tuple[int, int] | None
    incomplete: str | None = None
    trailing: int = 0


def read_header(raw: bytes) -> Header | None:
    """The header of an image file's bytes; None when they start with no signature OpenCV decodes."""
    for matches, reader in _READERS:
        if matches(raw):
            return reader(raw)
    return None


# --- JPEG -----------------------------------------------------------------------------------------------------------

_JPEG_START = b"\xff\xd8\xff"
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # the first marker after entropy-coded data
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn: markers without a length
_NOT_FRAMES = frozenset({0xC4, 0xC8, 0xCC})  # DHT, JPG, DAC share the SOFn range


def _jpeg(raw: bytes) -> Header:
    size, offset = None, 2
    while offset < len(raw):
        if raw[offset] != 0xFF:  # bytes between segments: decoders skip to the next marker, so do we
            offset = raw.find(b"\xff", offset)
            if offset < 0:
                break
            continue
        if offset + 1 >= len(raw):
            break
        marker = raw[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker == 0xD9:
            return Header("JPEG", size, None, len(raw) - offset - 2)
        if marker in _NO_LENGTH:
            offset += 2
            continue
        if offset + 4 > len(raw):
            break
        length = struct.unpack_from(">H", raw, offset + 2)[0]
        if 0xC0 <= marker <= 0xCF and marker not in _NOT_FRAMES and offset + 9 <= len(raw):
            height, width = struct.unpack_from(">HH", raw, offset + 5)
            size = (width, height) if width and height else None
        offset += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            found = _ENTROPY_END.search(raw, offset)
            if found is None:
                break
            offset = found.start()
    return Header("JPEG", size, "no end-of-image marker")


# --- PNG ------------------------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(raw: bytes) -> Header:
    size = struct.unpack_from(">II", raw, 16) if len(raw) >= 24 and raw[12:16] == b"IHDR" else None
    size = size if size and all(size) else None
    offset = 8
    while offset + 8 <= len(raw):
        length, kind = struct.unpack_from(">I4s", raw, offset)
        end = offset + 12 + length
        if kind == b"IEND" and end <= len(raw):
            return Header("PNG", size, None, len(raw) - end)
        offset = end
    return Header("PNG", size, "no IEND chunk")


# --- TIFF -----------------------------------------------------------------------------------------------------------

# TIFF field types and their struct codes (RATIONAL and the like are never the tags read here).
_TIFF_TYPES = {1: "B", 2: "B", 3: "H", 4: "I", 6: "b", 7: "B", 8: "h", 9: "i", 11: "f", 12: "d", 13: "I"}
_TIFF_TYPES |= {16: "Q", 17: "q", 18: "Q"}  # BigTIFF's 64-bit types
_WIDTH, _HEIGHT, _STRIPS, _STRIP_BYTES, _TILES, _TILE_BYTES = 256, 257, 273, 279, 324, 325


def _tiff(raw: bytes) -> Header:
    order = "<" if raw[:2] == b"II" else ">"
    big = struct.unpack_from(f"{order}H", raw, 2)[0] == 43
    if len(raw) < (16 if big else 8):
        return Header("TIFF", None, "the file ends inside its header")
    first = struct.unpack_from(f"{order}Q" if big else f"{order}I", raw, 8 if big else 4)[0]
    tags = _tiff_tags(raw, first, order, big)
    if tags is None:
        return Header("TIFF", None, "its first directory lies past the end of the file")
    width, height = (tags.get(_WIDTH) or (0,))[0], (tags.get(_HEIGHT) or (0,))[0]
    size = (int(width), int(height)) if width and height else None
    for offsets, counts in ((_STRIPS, _STRIP_BYTES), (_TILES, _TILE_BYTES)):
        if offsets in tags and counts in tags:
            end = max((o + c for o, c in zip(tags[offsets], tags[counts], strict=False)), default=0)
            if end > len(raw):
                return Header("TIFF", size, "its image data runs past the end of the file")
    return Header("TIFF", size)


def _tiff_tags(raw: bytes, at: int, order: str, big: bool) -> dict[int, tuple] | None:
    """The values of the size and data-layout tags of the directory at ``at``; None if it is not all in ``raw``."""
    # Classic TIFF: 2-byte entry count, 12-byte entries with 4-byte count and value; BigTIFF: 8, 20, 8 and 8.
    entries, entry_size, word = ("Q", 20, "Q") if big else ("H", 12, "I")
    start = at + struct.calcsize(order + entries)
    if at <= 0 or start > len(raw):
        return None
    count = struct.unpack_from(order + entries, raw, at)[0]
    if start + count * entry_size > len(raw):
        return None
    wanted = {_WIDTH, _HEIGHT, _STRIPS, _STRIP_BYTES, _TILES, _TILE_BYTES}
    tags = {}
    for entry in range(start, start + count * entry_size, entry_size):
        tag, kind = struct.unpack_from(f"{order}HH", raw, entry)
        if tag not in wanted or kind not in _TIFF_TYPES:
            continue
        n = struct.unpack_from(order + word, raw, entry + 4)[0]
        length = n * struct.calcsize(order + _TIFF_TYPES[kind])
        where = entry + 4 + struct.calcsize(order + word)
        if length > struct.calcsize(order + word):  # too long to sit in the entry: the entry holds its offset
            where = struct.unpack_from(order + word, raw, where)[0]
        if where + length > len(raw):
            return None
        tags[tag] = struct.unpack_from(f"{order}{n}{_TIFF_TYPES[kind]}", raw, where)
    return tags


# --- the other formats OpenCV reads ---------------------------------------------------------------------------------


def _bmp(raw: bytes) -> Header:
    if len(raw) < 26:
        return Header("BMP", None, "the file ends inside its header")
    pixels_at, header_size = struct.unpack_from("<II", raw, 10)
    if header_size == 12:  # OS/2 core header: 16-bit sizes
        width, height = struct.unpack_from("<HH", raw, 18)
        bits, compression = struct.unpack_from("<H", raw, 24)[0], 0
    elif len(raw) >= 34:
        width, height, _, bits, compression = struct.unpack_from("<iiHHI", raw, 18)
    else:
        return Header("BMP", None, "the file ends inside its header")
    width, height = abs(width), abs(height)  # a negative height is a top-down bitmap
    size = (width, height) if width and height else None
    rows_end = pixels_at + (width * bits + 31) // 32 * 4 * height  # uncompressed rows are padded to 4 bytes
    if size and compression in (0, 3) and bits and rows_end > len(raw):
        return Header("BMP", size, "its pixel rows run past the end of the file")
    return Header("BMP", size)


def _webp(raw: bytes) -> Header:
    riff_size = struct.unpack_from("<I", raw, 4)[0]
    missing = "it is shorter than its RIFF size" if len(raw) < riff_size + 8 else None
    chunk, size = raw[12:16], None
    if chunk == b"VP8 " and len(raw) >= 30 and raw[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", raw, 26)
        size = (width & 0x3FFF, height & 0x3FFF)
    elif chunk == b"VP8L" and len(raw) >= 25 and raw[20] == 0x2F:
        bits = int.from_bytes(raw[21:25], "little")
        size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    elif chunk == b"VP8X" and len(raw) >= 30:
        size = (int.from_bytes(raw[24:27], "little") + 1, int.from_bytes(raw[27:30], "little") + 1)
    return Header("WebP", size if size and all(size) else None, missing)


def _gif(raw: bytes) -> Header:
    size = struct.unpack_from("<HH", raw, 6) if len(raw) >= 10 else None
    return Header("GIF", size if size and all(size) else None)


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\S+)")
_PAM_FIELD = re.compile(rb"^(WIDTH|HEIGHT)\s+(\d+)", re.MULTILINE)


def _pnm(raw: bytes) -> Header:
    head = raw[:4096]
    if head[1:2] == b"7":  # PAM: WIDTH and HEIGHT lines
        fields = {name: int(value) for name, value in _PAM_FIELD.findall(head)}
        size = (fields.get(b"WIDTH", 0), fields.get(b"HEIGHT", 0))
    else:  # PBM, PGM, PPM, PFM: the magic, then width and height as text tokens
        tokens = [m.group(1) for m in itertools.islice(_PNM_TOKEN.finditer(head, 2), 2)]
        size = tuple(int(t) for t in tokens[:2]) if len(tokens) >= 2 and all(t.isdigit() for t in tokens[:2]) else None
    return Header("PNM", size if size and all(size) else None)


def _sun_raster(raw: bytes) -> Header:
    size = struct.unpack_from(">II", raw, 4) if len(raw) >= 12 else None
    return Header("Sun raster", size if size and all(size) else None)


_HDR_RESOLUTION = re.compile(rb"\n([-+])([XY]) (\d+) ([-+])([XY]) (\d+)")


def _hdr(raw: bytes) -> Header:
    found = _HDR_RESOLUTION.search(raw[:65536])
    if found is None:
        return Header("HDR", None)
    first, second = int(found.group(3)), int(found.group(6))
    return Header("HDR", (second, first) if found.group(2) == b"Y" else (first, second))


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SIGNATURE = b"\xff\x4f\xff\x51"


def _jpeg2000(raw: bytes) -> Header:
    if raw.startswith(_J2K_SIGNATURE):  # a bare codestream: image size less its offset, from the SIZ segment
        if len(raw) < 24:
            return Header("JPEG 2000", None)
        width, height, left, top = struct.unpack_from(">IIII", raw, 8)
        size = (width - left, height - top)
    else:
        at = raw.find(b"ihdr", 0, 65536)
        size = struct.unpack_from(">II", raw, at + 4)[::-1] if at >= 0 and at + 12 <= len(raw) else None
    return Header("JPEG 2000", size if size and all(v > 0 for v in size) else None)


def _is_avif(raw: bytes) -> bool:
    if raw[4:8] != b"ftyp" or len(raw) < 16:
        return False
    box = struct.unpack_from(">I", raw, 0)[0]
    brands = raw[8:12] + raw[16 : min(box, 256)]
    return any(brands[i : i + 4] in (b"avif", b"avis") for i in range(0, len(brands), 4))


def _avif(raw: bytes) -> Header:
    """The largest image spatial extent (``ispe``) of the file: the primary image, or a grid's whole canvas."""
    sizes, at = [], raw.find(b"ispe", 0, 1 << 20)
    while at >= 0 and at + 16 <= len(raw):
        width, height = struct.unpack_from(">II", raw, at + 8)
        sizes.append((width, height))
        at = raw.find(b"ispe", at + 4, 1 << 20)
    size = max(sizes, key=lambda s: s[0] * s[1], default=None)
    return Header("AVIF", size if size and all(size) else None)


_READERS = (
    (lambda raw: raw.startswith(_JPEG_START), _jpeg),
    (lambda raw: raw.startswith(_PNG_SIGNATURE), _png),
    (lambda raw: raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    (lambda raw: raw.startswith(b"BM"), _bmp),
    (lambda raw: raw[:4] == b"RIFF" and raw[8:12] == b"WEBP", _webp),
    (lambda raw: raw[:6] in (b"GIF87a", b"GIF89a"), _gif),
    (lambda raw: raw[:1] == b"P" and raw[1:2] in b"1234567Ff" and len(raw) > 2, _pnm),
    (lambda raw: raw.startswith(b"\x59\xa6\x6a\x95"), _sun_raster),
    (lambda raw: raw.startswith((b"#?RADIANCE", b"#?RGBE")), _hdr),
    (lambda raw: raw.startswith((_JP2_SIGNATURE, _J2K_SIGNATURE)), _jpeg2000),
    (_is_avif, _avif),
)
