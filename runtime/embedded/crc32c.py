"""CRC-32C (Castagnoli), the checksum of OP_MSG's optional ``checksumPresent`` trailer.

No CRC-32C package is a dependency, and :mod:`zlib` only has the IEEE polynomial, so this is
the classic table-driven form, processing 8 bytes per step ("slicing-by-8"). Drivers only
add checksums when asked to, so this is not on the common path.
"""

from __future__ import annotations

_POLYNOMIAL = 0x82F63B78  # reversed 0x1EDC6F41


def _tables() -> list[list[int]]:
    first = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLYNOMIAL if crc & 1 else 0)
        first.append(crc)
    tables = [first]
    for _ in range(7):
        previous = tables[-1]
        tables.append([(previous[n] >> 8) ^ first[previous[n] & 0xFF] for n in range(256)])
    return tables


_T = _tables()


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """The CRC-32C of ``data`` (continuing from ``crc``)."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _T
    crc ^= 0xFFFFFFFF
    view = memoryview(data).cast("B")
    whole = len(view) - len(view) % 8
    for offset in range(0, whole, 8):
        low = crc ^ int.from_bytes(view[offset:offset + 4], "little")
        high = int.from_bytes(view[offset + 4:offset + 8], "little")
        crc = (t7[low & 0xFF] ^ t6[(low >> 8) & 0xFF] ^ t5[(low >> 16) & 0xFF]
               ^ t4[low >> 24] ^ t3[high & 0xFF] ^ t2[(high >> 8) & 0xFF]
               ^ t1[(high >> 16) & 0xFF] ^ t0[high >> 24])
    for byte in view[whole:]:
        crc = (crc >> 8) ^ t0[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF
