"""DuckDB's Python values as JSON values and as CSV fields."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import math
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, TypeAlias

import orjson

# What a result value becomes in JSON: dates and times as ISO 8601 strings, decimals as numbers.
JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
# orjson, which renders responses, writes integers of at most 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def json_value(value: Any) -> JsonValue:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if isinstance(value, float):
        # Like PostgreSQL's to_json: JSON has no NaN or infinity, so they are strings.
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Decimal):
        return json_value(int(value) if value == value.to_integral_value() else float(value))
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return iso_duration(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


def iso_duration(value: dt.timedelta) -> str:
    """ISO 8601: P1DT2H3M4.5S; DuckDB's months arrive as 30 days each."""
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    secs = f"{seconds}.{value.microseconds:06d}".rstrip("0").rstrip(".")
    return f"{sign}P{value.days}DT{hours}H{minutes}M{secs}S"


def json_rows(rows: Sequence[tuple[Any, ...]]) -> list[list[JsonValue]]:
    return [[json_value(v) for v in row] for row in rows]


def _csv_field(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, str | int):
        return value
    converted = json_value(value)
    if isinstance(converted, list | dict):
        return orjson.dumps(converted).decode()
    return converted


def csv_chunk(rows: Sequence[tuple[Any, ...]], header: Sequence[str] | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows([_csv_field(v) for v in row] for row in rows)
    return out.getvalue().encode("utf-8")
