"""The summary of one file's columns: two scans, whatever the number of columns."""

from __future__ import annotations

from typing import Any

from csvstore.query.sandbox import Sandbox, quote_name
from csvstore.query.values import json_value

NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL")
TOP = 5


def _numeric(type_name: str) -> bool:
    return type_name.lstrip("U").startswith(NUMERIC)


def summarize(box: Sandbox, name: str, source: Any, make: Any) -> list[Any]:
    """Counts, approximate distinct values, min, max, mean and std (numeric columns) in one
    scan; the top values are approx_top_k's candidates counted exactly in a second scan."""
    box.define(name, source.path, source.dialect)
    table = quote_name(name)
    columns = [] if source.dialect.no_columns else box.columns(name)
    if not columns:
        return []
    parts = ["count(*)"]
    for col, type_name in columns:
        q = quote_name(col)
        parts += [f"count({q})", f"approx_count_distinct({q})", f"min({q})", f"max({q})"]
        if _numeric(type_name):
            parts += [f"avg({q})::DOUBLE", f"stddev_samp({q})::DOUBLE"]
        else:
            parts += ["NULL", "NULL"]
        parts.append(f"approx_top_k({q}, {TOP})")
    first = box.con.execute(f"SELECT {', '.join(parts)} FROM {table}").fetchone()
    assert first is not None
    total, stats = first[0], first[1:]
    per = 7
    filters: list[str] = []
    params: list[Any] = []
    for i, (col, _) in enumerate(columns):
        for value in stats[i * per + 6] or []:
            filters.append(f"count(*) FILTER (WHERE {quote_name(col)} = ?)")
            params.append(value)
    counts: list[Any] = []
    if filters:
        row = box.con.execute(f"SELECT {', '.join(filters)} FROM {table}", params).fetchone()
        counts = list(row or [])
    summaries = []
    for i, (col, type_name) in enumerate(columns):
        count, distinct, low, high, mean, std, candidates = stats[i * per : i * per + per]
        top = []
        for value in candidates or []:
            top.append((json_value(value), int(counts.pop(0))))
        top.sort(key=lambda vc: -vc[1])
        summaries.append(
            make(
                name=col,
                type=type_name,
                count=int(count),
                nulls=int(total - count),
                approx_distinct=int(distinct),
                min=json_value(low),
                max=json_value(high),
                mean=mean,
                std=std,
                top=top,
            )
        )
    return summaries
