"""Hand-built image bytes the tests share."""

from __future__ import annotations

import struct
import zlib


def png_header_only(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG signature + IHDR + IEND: claims a size (and grey / RGB / RGBA, 8 or 16 bits)
    without carrying any pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_with_chunks(extra: bytes, side: int = 8) -> bytes:
    """A valid black `side`x`side` grey PNG with `extra` chunks before its pixel data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = b"".join(b"\0" + bytes(side) for _ in range(side))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def crafted_files() -> dict[str, bytes]:
    """Files whose headers or ancillary chunks make Pillow raise ValueError (issue 25): an
    iCCP and a zTXt chunk inflating to 20 MiB, 80 zTXt chunks of 1 MiB each, and a PPM whose
    size field is '64+48'."""
    bomb = zlib.compress(bytes(20 * 2**20))
    return {
        "iccp.png": png_with_chunks(chunk(b"iCCP", b"profile\0\0" + bomb)),
        "ztxt.png": png_with_chunks(chunk(b"zTXt", b"comment\0\0" + bomb)),
        "many-ztxt.png": png_with_chunks(b"".join(
            chunk(b"zTXt", b"k%d\0\0" % i + zlib.compress(b"a" * 2**20)) for i in range(80))),
        "plus.ppm": b"P5\n64+48\n255\n" + bytes(64 * 48),
    }
