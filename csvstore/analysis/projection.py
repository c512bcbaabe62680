"""Stored bytes to one byte per code unit, ASCII only where the code unit is ASCII."""

from __future__ import annotations

import re
from typing import Final

SUPPORTED_ENCODINGS: Final = ("utf-8", "utf-8-sig", "cp1252", "utf-16")


class _Projector:
    """One byte per code unit: the low byte of an ASCII UTF-16 unit, >= 0x80 for any other
    (U+012C is no comma); identity for ASCII-compatible codecs."""

    __slots__ = ("_carry", "_little", "_pairs", "_wide")

    def __init__(self, *, wide: bool, little: bool, encoding: str = "") -> None:
        self._wide = wide
        self._little = little
        self._carry = b""
        self._pairs = _DOUBLE_BYTE.get(encoding)

    def project(self, data: bytes) -> bytes:
        if self._pairs is not None:
            return self._mask_pairs(self._pairs, data)
        if not self._wide:
            return data
        if self._carry:
            data = self._carry + data
        if len(data) % 2:
            self._carry = data[-1:]
            data = data[:-1]
        else:
            self._carry = b""
        low, high = (data[0::2], data[1::2]) if self._little else (data[1::2], data[0::2])
        if high.count(0) == len(high):
            return low
        flags = high.translate(_NONZERO_TO_HIGH_BIT)
        # One big-int OR sets the high bit of every non-ASCII unit, at C speed.
        merged = int.from_bytes(low, "big") | int.from_bytes(flags, "big")
        return merged.to_bytes(len(low), "big")

    def _mask_pairs(self, pairs: tuple[re.Pattern[bytes], bytes], data: bytes) -> bytes:
        # Shift-JIS and the like have ASCII trail bytes ("|"): pairs become two non-ASCII.
        pattern, leads = pairs
        carry, self._carry = self._carry, b""
        if carry:
            data = carry + data
        masked = pattern.sub(b"\x80\x80", data)
        if data and masked[-1] == data[-1] and data[-1] in leads:
            self._carry = data[-1:]  # a lead byte; its trail is in the next chunk
        return masked[len(carry) :]


_NONZERO_TO_HIGH_BIT: Final = bytes([0] + [0x80] * 255)
_SJIS_LEADS: Final = bytes([*range(0x81, 0xA0), *range(0xE0, 0xFD)])
_DBCS_LEADS: Final = bytes(range(0x81, 0xFF))
_SJIS_PAIR: Final = (re.compile(rb"[\x81-\x9f\xe0-\xfc][\x40-\x7e\x80-\xfc]"), _SJIS_LEADS)
_DBCS_PAIR: Final = (re.compile(rb"[\x81-\xfe][\x30-\x39\x40-\x7e\x80-\xfe]"), _DBCS_LEADS)
# Python's names (codecs.lookup(...).name) of the codecs whose trail bytes can be ASCII.
_DOUBLE_BYTE: Final = {
    **dict.fromkeys(("shift_jis", "cp932", "shift_jis_2004", "shift_jisx0213"), _SJIS_PAIR),
    **dict.fromkeys(("gbk", "gb18030", "big5", "big5hkscs", "cp950", "cp949", "johab"), _DBCS_PAIR),
}


def double_byte(encoding: str) -> bool:
    """A CJK code page whose characters may be two bytes (Python's codec name)."""
    return encoding in _DOUBLE_BYTE


def profilable(encoding: str) -> bool:
    """True if the profiler can count records of a file in this codec (Python's name)."""
    if encoding in SUPPORTED_ENCODINGS or encoding in _DOUBLE_BYTE:
        return True
    try:
        return bytes(range(128)).decode(encoding) == bytes(range(128)).decode("ascii")
    except (UnicodeError, LookupError):  # UnicodeError: utf-16/32 without a BOM, and others
        return False


def _decoding_codec(encoding: str, little_endian: bool) -> str:
    """The codec for bytes past any BOM."""
    if encoding == "utf-16":
        return "utf-16-le" if little_endian else "utf-16-be"
    if encoding == "utf-8-sig":
        return "utf-8"
    return encoding
