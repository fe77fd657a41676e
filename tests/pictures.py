"""Image files for tests: a small file that holds a huge image (a decompression bomb)."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int = 13000, height: int = 13000) -> bytes:
    """A valid 8-bit grayscale PNG of white pixels, compressed row by row: 13000×13000 is about
    37 kB on disk and 169 MB once decoded. Made without ever holding the pixels in memory."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * width  # filter type 0, then the row's pixels
    rows = [compressor.compress(row * 100) for _ in range(height // 100)]
    data = b"".join(rows) + compressor.compress(row * (height % 100)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))  # fmt: skip
