"""The marshmallow shapes of every request and response; the OpenAPI document is built from them."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate
from multidict import MultiMapping

from csvstore.analysis.content import declared_encoding
from csvstore.config import Settings
from csvstore.errors import BadRequest, ValidationFailed
from csvstore.web.problems import PROBLEM_TYPE, all_reasons

# Matched in full (fullmatch): with re.match, "$" also matches before a trailing newline.
# Written with ^ and $ so the OpenAPI document's pattern is a valid ECMA-262 one.
SESSION_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
SESSION_ID_RULE = (
    "a session id is 1-128 characters of A-Z a-z 0-9 . _ - and does not start with '.'"
)

# 100 a page is what a plain client gets without asking; 1,000 keeps one answer bounded.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_TIMESTAMP = {"format": "date-time", "example": "2024-01-01T12:00:00.000Z"}


class FullMatch(validate.Regexp):
    """marshmallow's Regexp, but the whole value must match (``re.fullmatch``)."""

    def __init__(self, regex: str, *, error: str) -> None:
        super().__init__(regex, error=error)
        self._whole = re.compile(regex)

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, str) or self._whole.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class SessionIdField(fields.String):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(
            required=True,
            validate=FullMatch(SESSION_ID_PATTERN, error=SESSION_ID_RULE),
            metadata={"description": SESSION_ID_RULE, "example": "my_session_123"},
            **kwargs,  # type: ignore[arg-type]
        )


MAX_TTL_SECONDS = 10 * 366 * 86400  # ten years: beyond that, "forever" is the honest answer


class SessionCreateRequest(Schema):
    class Meta:
        unknown = RAISE

    session_id = SessionIdField()
    ttl_seconds = fields.Integer(
        strict=True,
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=1, max=MAX_TTL_SECONDS),
        metadata={
            "description": "delete the session and its files this many seconds after creation "
            "(default: the server's --session-ttl, none unless set)"
        },
    )


class SessionListQuery(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(
        load_default=DEFAULT_PAGE_SIZE,
        validate=validate.Range(min=1, max=MAX_PAGE_SIZE),
        metadata={"description": f"sessions per page (1-{MAX_PAGE_SIZE})"},
    )
    after = fields.String(
        load_default="",
        # No session id holds a NUL, and PostgreSQL refuses one in a text parameter.
        validate=[
            validate.Length(max=128),
            FullMatch(r"^[^\x00]*$", error="must not contain a NUL character"),
        ],
        metadata={"description": "cursor: list the sessions whose id sorts after this one"},
    )


def load(schema: Schema, data: Any, *, what: str) -> dict[str, Any]:
    """Validate input with a schema; a failure is a 400 that names each offending field."""
    try:
        return schema.load(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        messages: dict[str, Any] = (
            exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        )
        summary = "; ".join(
            f"{field}: {' '.join(map(str, msgs)) if isinstance(msgs, list) else msgs}"
            for field, msgs in messages.items()
        )
        raise ValidationFailed(f"invalid {what}: {summary}", errors=messages) from None


def load_query(schema: Schema, query: MultiMapping[str]) -> dict[str, Any]:
    """A query string through its schema; a parameter given twice is a 400 too."""
    repeated = sorted({key for key in query if len(query.getall(key)) > 1})
    if repeated:
        messages = {
            key: [f"given {len(query.getall(key))} times; send it once"] for key in repeated
        }
        summary = "; ".join(f"{key}: {msgs[0]}" for key, msgs in messages.items())
        raise ValidationFailed(f"invalid query: {summary}", errors=messages)
    return load(schema, dict(query), what="query")


MAX_ROWS_PER_PAGE = 1000  # one answer stays small, whatever the file


class RowsQuery(Schema):
    class Meta:
        unknown = RAISE

    offset = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0),
        metadata={"description": "data-row index to start at (0 = the first row after the header)"},
    )
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=MAX_ROWS_PER_PAGE),
        metadata={"description": f"rows to return (1-{MAX_ROWS_PER_PAGE})"},
    )


_ROWS_MAX_MIB = Settings().rows_max_bytes // 2**20
_CELL_LIMIT = Settings().rows_cell_limit


class RowsResponse(Schema):
    columns = fields.List(fields.String(), required=True, metadata={"description": "the header"})
    rows = fields.List(
        fields.List(fields.String()),
        required=True,
        metadata={
            "description": f"at most {_ROWS_MAX_MIB} MiB of the file (--rows-max-bytes) is "
            "parsed per request, from the first row returned: fewer rows than limit come back "
            "when they are longer (next_offset goes on from there)"
        },
    )
    next_offset = fields.Integer(
        required=True, allow_none=True, metadata={"description": "null at the end of the file"}
    )
    truncated = fields.List(
        fields.List(fields.Integer(), validate=validate.Length(equal=2)),
        required=True,
        metadata={
            "description": "[row, column] of each cell cut short, row indexing `rows`: a cell "
            f"over {_CELL_LIMIT:,} characters (--rows-cell-limit) comes back as its first "
            f"{_CELL_LIMIT:,}; a first row longer than the {_ROWS_MAX_MIB} MiB read ends with "
            "the cell cut there. The whole cell is in the file's content (GET .../content, "
            "with Range).",
            "example": [[0, 3]],
        },
    )


class FileSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    filename = fields.String(
        required=True,
        metadata={
            "description": "stored name, UUID-based",
            "example": "1b4e28ba-2fa1-11d2-883f-0016d3cca427.csv",
        },
    )
    original_filename = fields.String(required=True, metadata={"example": "data.csv"})
    file_size = fields.Integer(required=True, metadata={"description": "bytes"})
    content_type = fields.String(required=True, metadata={"example": "text/csv"})
    created_at = fields.String(required=True, metadata=_TIMESTAMP)
    # What the single pass learned (null for files stored before profiling existed).
    sha256 = fields.String(allow_none=True, metadata={"description": "hex SHA-256 of the bytes"})
    encoding = fields.String(
        allow_none=True,
        metadata={"description": "Python codec the file is read back in", "example": "cp1251"},
    )
    encoding_source = fields.String(
        allow_none=True,
        metadata={"description": "how it was decided: declared, bom, detected or fallback"},
    )
    encoding_confidence = fields.Float(
        allow_none=True, metadata={"description": "0-1: the detector's confidence; null: fallback"}
    )
    invalid_bytes = fields.Integer(
        allow_none=True,
        metadata={"description": "bytes not valid in the encoding (read back as U+FFFD)"},
    )
    first_invalid_offset = fields.Integer(
        allow_none=True, metadata={"description": "byte offset of the first of them"}
    )
    delimiter = fields.String(allow_none=True, metadata={"example": ","})
    quotechar = fields.String(allow_none=True, metadata={"example": '"'})
    line_terminator = fields.String(allow_none=True, metadata={"example": "\r\n"})
    has_header = fields.Boolean(allow_none=True)
    columns = fields.List(fields.String(), allow_none=True)
    column_count = fields.Integer(allow_none=True)
    row_count = fields.Integer(allow_none=True, metadata={"description": "data rows, no header"})
    ragged_rows = fields.Integer(
        allow_none=True, metadata={"description": "rows whose field count differs"}
    )
    preamble_lines = fields.Integer(
        allow_none=True,
        metadata={
            "description": "lines before the header (titles, comments, key: value lines, "
            "blank lines) that are not part of the table; rows and columns start after them"
        },
    )
    skip_initial_space = fields.Boolean(
        allow_none=True,
        metadata={"description": 'spaces after a delimiter are skipped (1, "Smith, J")'},
    )
    comment_char = fields.String(
        allow_none=True,
        metadata={"description": "lines starting with it are comments, not rows", "example": "#"},
    )
    duplicate_columns = fields.List(
        fields.String(),
        allow_none=True,
        metadata={"description": "header names that occur more than once"},
    )
    footer_lines = fields.Integer(
        allow_none=True,
        metadata={
            "description": "lines after the table's last row (notes, sources, blank lines) "
            "that are not rows"
        },
    )
    escape_char = fields.String(
        allow_none=True,
        metadata={
            "description": 'the character escaping a quote inside quoted fields (\\" in '
            "MySQL's INTO OUTFILE exports); null: quotes are doubled, as RFC 4180 has it",
            "example": "\\",
        },
    )
    header_rule = fields.Boolean(
        allow_none=True,
        metadata={"description": "a rule line (--,----) under the header, not a row"},
    )
    duplicate_of = fields.String(
        metadata={"description": "set when dedupe=true found these bytes already stored"}
    )


class SessionSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    session_id = fields.String(required=True, metadata={"example": "my_session_123"})
    created_at = fields.String(required=True, metadata=_TIMESTAMP)
    updated_at = fields.String(required=True, metadata=_TIMESTAMP)
    expires_at = fields.String(
        allow_none=True,
        metadata={**_TIMESTAMP, "description": "when the session and its files are deleted"},
    )
    csv_files = fields.List(fields.Nested(FileSchema), required=True)


class SessionCreatedResponse(Schema):
    message = fields.String(required=True, metadata={"example": "Session created successfully"})
    session_id = fields.String(required=True)


class UploadOptions(Schema):
    """Optional form fields of an upload, before or after the file."""

    class Meta:
        unknown = RAISE

    sha256 = fields.String(
        validate=FullMatch(r"^[0-9a-fA-F]{64}$", error="expected 64 hex digits"),
        metadata={"description": "expected SHA-256 (hex); a mismatch is a 400, nothing stored"},
    )
    strict = fields.Boolean(
        metadata={"description": "refuse (400) a file with rows whose width differs"}
    )
    dedupe = fields.Boolean(
        metadata={
            "description": "if the session already has these bytes, answer 200 with that file"
        }
    )
    encoding = fields.String(
        validate=validate.Length(min=1, max=40),
        metadata={
            "description": "the file's encoding (any Python codec name); every byte must "
            "decode in it, else 400. In a form it must come before the file part",
            "example": "iso-8859-7",
        },
    )

    def load(self, *args: Any, **kwargs: Any) -> Any:
        data = super().load(*args, **kwargs)
        if "sha256" in data:
            data["sha256"] = data["sha256"].lower()
        if "encoding" in data:
            try:
                data["encoding"] = declared_encoding(data["encoding"], "encoding")
            except BadRequest as exc:
                raise ValidationError({"encoding": [exc.detail]}) from None
        return data


class UploadForm(UploadOptions):
    """The multipart form of an upload (documentation; the handler streams it part by part)."""

    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary"})
    session_id = SessionIdField()


class UploadResponse(Schema):
    message = fields.String(required=True, metadata={"example": "File uploaded successfully"})
    session_id = fields.String(required=True)
    file = fields.Nested(FileSchema, required=True)


# A JSON answer stays small; the whole result streams as text/csv instead.
MAX_QUERY_LIMIT = 10_000
# Any SQL this long fits the 64 KiB JSON body limit, even as \ud83d\ude00 escapes (12 bytes
# a character): a longer one would be 413 instead of the schema's 400.
MAX_SQL_LENGTH = 5_000


class QueryRequest(Schema):
    class Meta:
        unknown = RAISE

    sql = fields.String(
        required=True,
        validate=validate.Length(min=1, max=MAX_SQL_LENGTH),
        metadata={
            "description": "one read-only statement; each file of the session is a table",
            "example": "SELECT region, sum(amount) FROM sales GROUP BY region",
        },
    )
    limit = fields.Integer(
        strict=True,
        load_default=1000,
        validate=validate.Range(min=1, max=MAX_QUERY_LIMIT),
        metadata={"description": f"rows returned in JSON (1-{MAX_QUERY_LIMIT}); text/csv: all"},
    )


class QueryResponse(Schema):
    columns = fields.List(fields.String(), required=True)
    types = fields.List(
        fields.String(), required=True, metadata={"description": "DuckDB's type of each column"}
    )
    rows = fields.List(
        fields.List(fields.Raw()),
        required=True,
        metadata={"description": "numbers, strings, booleans, null; dates as ISO 8601 strings"},
    )
    row_count = fields.Integer(required=True, metadata={"description": "rows returned"})
    truncated = fields.Boolean(required=True, metadata={"description": "more rows than limit"})
    elapsed_ms = fields.Float(required=True)


class ColumnSchema(Schema):
    name = fields.String(required=True)
    type = fields.String(required=True, metadata={"example": "BIGINT"})


class TableSchema(Schema):
    name = fields.String(
        required=True,
        metadata={"description": "from the original file name: a-z 0-9 _", "example": "sales"},
    )
    file_id = fields.String(required=True, metadata={"format": "uuid"})
    columns = fields.List(fields.Nested(ColumnSchema), required=True)
    row_count = fields.Integer(required=True)
    error = fields.String(
        allow_none=True,
        metadata={"description": "why DuckDB cannot read this file (then no columns, 0 rows)"},
    )


class TopValue(Schema):
    value = fields.Raw(required=True)
    count = fields.Integer(required=True)


class ColumnSummarySchema(Schema):
    name = fields.String(required=True)
    type = fields.String(required=True)
    count = fields.Integer(required=True, metadata={"description": "values that are not null"})
    nulls = fields.Integer(required=True)
    approx_distinct = fields.Integer(required=True)
    min = fields.Raw(allow_none=True)
    max = fields.Raw(allow_none=True)
    mean = fields.Float(allow_none=True, metadata={"description": "numeric columns only"})
    std = fields.Float(allow_none=True, metadata={"description": "numeric columns only"})
    top = fields.List(
        fields.Nested(TopValue), required=True, metadata={"description": "5 most frequent"}
    )


class SummaryResponse(Schema):
    file_id = fields.String(required=True, metadata={"format": "uuid"})
    computed_at = fields.String(
        required=True,
        metadata={**_TIMESTAMP, "description": "computed once, then kept with the file"},
    )
    columns = fields.List(fields.Nested(ColumnSummarySchema), required=True)


class MessageResponse(Schema):
    message = fields.String(required=True)


class Problem(Schema):
    """RFC 9457 problem details: every error answer has this shape."""

    type = fields.String(
        required=True,
        metadata={"example": f"{PROBLEM_TYPE}unknown-session", "description": "the code as a URI"},
    )
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True, metadata={"description": "what was wrong, for people"})
    code = fields.String(
        required=True,
        validate=validate.OneOf(all_reasons()),
        metadata={"description": "what was wrong, for programs: stable across releases"},
    )
    errors = fields.Dict(
        keys=fields.String(),
        metadata={"description": "validation errors by field name"},
    )
