"""A seeded corpus of damaged images for the fuzz tests: a real BUSI scan saved as PNG, JPEG,
GIF, TIFF and BMP, then mutated by byte flips, truncations and edits of whole chunks (PNG
chunks with their CRC fixed, so the decoder gets past the checksum; slices elsewhere)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "tif": "TIFF", "bmp": "BMP"}
SEED_SIDE = 64  # small seeds keep the corpus fast; headers and codecs are what is fuzzed
HEADER_BYTES = 256  # half the flips land here, where the sizes, modes and offsets are


def seed_files(scan: Path) -> dict[str, bytes]:
    """The scan (grey, SEED_SIDE pixels wide) in each format; TIFF as RGB with LZW."""
    with Image.open(scan) as image:
        grey = image.convert("L").resize((SEED_SIDE, SEED_SIDE))
    seeds = {}
    for suffix, image_format in FORMATS.items():
        out = io.BytesIO()
        if image_format == "TIFF":
            grey.convert("RGB").save(out, format=image_format, compression="tiff_lzw")
        else:
            grey.save(out, format=image_format)
        seeds[suffix] = out.getvalue()
    return seeds


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk of a well-formed PNG."""
    chunks, at = [], 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunks.append((kind, data[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + kind + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF) for kind, body in chunks)


def _flip(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        limit = HEADER_BYTES if rng.random() < 0.5 else len(out)
        out[int(rng.integers(0, min(limit, len(out))))] = int(rng.integers(0, 256))
    return bytes(out)


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[:int(rng.integers(1, len(data)))]


def _edit_chunk(data: bytes, suffix: str, rng: np.random.Generator) -> bytes:
    """PNG: a chunk's data flipped, dropped, doubled or its IHDR fields randomised, CRCs
    recomputed. Other formats: a slice deleted, doubled or overwritten with noise."""
    if suffix == "png":
        chunks = _png_chunks(data)
        i = int(rng.integers(0, len(chunks)))
        kind, body = chunks[i]
        action = int(rng.integers(0, 4))
        if action == 0 and body:
            chunks[i] = (kind, _flip(body, rng))
        elif action == 1:
            del chunks[i]
        elif action == 2:
            chunks.insert(i, chunks[i])
        else:
            fields = rng.integers(0, 256, 13, dtype=np.uint8).tobytes()
            chunks[0] = (b"IHDR", chunks[0][1][:8] + fields[8:])  # depth, colour type, ...
        return _png(chunks)
    start = int(rng.integers(0, len(data)))
    end = min(len(data), start + int(rng.integers(1, 64)))
    action = int(rng.integers(0, 3))
    if action == 0:
        return data[:start] + data[end:]
    if action == 1:
        return data[:end] + data[start:]
    return data[:start] + rng.integers(0, 256, end - start, dtype=np.uint8).tobytes() + data[end:]


def fuzz_corpus(scan: Path, per_format: int = 24, seed: int = 25) -> list[tuple[str, bytes]]:
    """(name, bytes) of `per_format` mutants of each seed file, a third of each kind."""
    rng = np.random.default_rng(seed)
    corpus = []
    for suffix, data in seed_files(scan).items():
        for n in range(per_format):
            kind = ("flip", "truncate", "chunk")[n % 3]
            mutant = (_flip(data, rng) if kind == "flip" else _truncate(data, rng)
                      if kind == "truncate" else _edit_chunk(data, suffix, rng))
            corpus.append((f"{kind}-{n:02d}.{suffix}", mutant))
    return corpus
