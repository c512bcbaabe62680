"""The marshmallow shapes of every request and response; the OpenAPI document is built from them."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
SESSION_ID_RULE = (
    "a session id is 1-128 characters of A-Z a-z 0-9 . _ - and does not start with '.'"
)

# 100 a page is what a plain client gets without asking; 1,000 keeps one answer bounded.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_TIMESTAMP = {"format": "date-time", "example": "2024-01-01T12:00:00.000Z"}


class SessionIdField(fields.String):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(
            required=True,
            validate=validate.Regexp(SESSION_ID_PATTERN, error=SESSION_ID_RULE),
            metadata={"description": SESSION_ID_RULE, "example": "my_session_123"},
            **kwargs,  # type: ignore[arg-type]
        )


class SessionCreateRequest(Schema):
    class Meta:
        unknown = RAISE

    session_id = SessionIdField()


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
        validate=validate.Length(max=128),
        metadata={"description": "cursor: list the sessions whose id sorts after this one"},
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


class SessionSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    session_id = fields.String(required=True, metadata={"example": "my_session_123"})
    created_at = fields.String(required=True, metadata=_TIMESTAMP)
    updated_at = fields.String(required=True, metadata=_TIMESTAMP)
    csv_files = fields.List(fields.Nested(FileSchema), required=True)


class SessionCreatedResponse(Schema):
    message = fields.String(required=True, metadata={"example": "Session created successfully"})
    session_id = fields.String(required=True)


class UploadForm(Schema):
    """The multipart form of an upload (documentation; the handler streams it part by part)."""

    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary"})
    session_id = SessionIdField()


class UploadResponse(Schema):
    message = fields.String(required=True, metadata={"example": "File uploaded successfully"})
    session_id = fields.String(required=True)
    file = fields.Nested(FileSchema, required=True)


class MessageResponse(Schema):
    message = fields.String(required=True)


class Problem(Schema):
    """RFC 9457 problem details: every error answer has this shape."""

    type = fields.String(required=True, metadata={"example": "about:blank"})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True, metadata={"description": "what was wrong, for people"})
    errors = fields.Dict(
        keys=fields.String(),
        metadata={"description": "validation errors by field name"},
    )
