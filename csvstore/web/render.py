"""Responses rendered as projections onto a marshmallow schema's fields: the values already
have the right types (the tests check it against ``Schema.dump``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import Schema, fields

# Renders a mapping, or an object with the fields as attributes (csvstore/model.py).
Projection = Callable[[Any], dict[str, Any]]
_ABSENT = object()


def _is_plain(field: fields.Field[Any]) -> bool:
    """Fields whose dump leaves a database value as it is."""
    if isinstance(field, fields.List):
        return _is_plain(field.inner)
    plain = fields.String | fields.Integer | fields.Float | fields.Boolean | fields.Dict
    return isinstance(field, plain) or (type(field) is fields.Raw)


def projector(schema: Schema) -> Projection:
    """A function that renders what ``schema.dump`` would, only faster; it refuses schemas
    with fields that would transform values."""
    plain: list[tuple[str, str]] = []
    nested: list[tuple[str, str, Projection, bool]] = []
    for name, field in schema.dump_fields.items():
        key = field.data_key or name
        if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
            nested.append((name, key, projector(field.schema), bool(field.many)))
        elif isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
            inner = field.inner.schema
            assert isinstance(inner, Schema)
            nested.append((name, key, projector(inner), True))
        elif _is_plain(field):
            plain.append((name, key))
        else:
            raise TypeError(f"{type(schema).__name__}.{name}: {type(field).__name__} needs dump()")

    def project(obj: Any) -> dict[str, Any]:
        if isinstance(obj, Mapping):
            out = {key: obj[name] for name, key in plain if name in obj}
            values = [(key, obj[name], sub, many) for name, key, sub, many in nested if name in obj]
        else:
            out = {}
            for name, key in plain:
                if (value := getattr(obj, name, _ABSENT)) is not _ABSENT:
                    out[key] = value
            values = [
                (key, getattr(obj, name), sub, many)
                for name, key, sub, many in nested
                if hasattr(obj, name)
            ]
        for key, value, sub, many in values:
            if value is None:
                out[key] = None
            else:
                out[key] = [sub(item) for item in value] if many else sub(value)
        return out

    return project
