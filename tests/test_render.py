"""The fast projections render exactly what the marshmallow schemas would."""

from __future__ import annotations

import pytest
from marshmallow import Schema, fields

from csvstore.web import schemas
from csvstore.web.render import projector

FILE_ROW = {
    "id": "e6a2f52c-0f4c-40f9-b3ff-1fcf35fdff1e",
    "session_id": "internal-pk",
    "filename": "e6a2f52c-0f4c-40f9-b3ff-1fcf35fdff1e.csv",
    "original_filename": "data.csv",
    "file_size": 8,
    "content_type": "text/csv",
    "file_path": "e6a2f52c-0f4c-40f9-b3ff-1fcf35fdff1e.csv",
    "created_at": "2026-11-27T17:13:17.899Z",
}
SESSION_ROW = {
    "id": "58b73bc7-3994-452a-869c-f648f856e6db",
    "session_id": "my_session_123",
    "created_at": "2026-11-27T17:13:17.882Z",
    "updated_at": "2026-11-27T17:13:17.899Z",
    "csv_files": [FILE_ROW, {**FILE_ROW, "id": "other"}],
}


@pytest.mark.parametrize(
    ("schema", "data"),
    [
        (schemas.FileSchema(), FILE_ROW),
        (schemas.SessionSchema(), SESSION_ROW),
        (schemas.SessionSchema(), {**SESSION_ROW, "csv_files": []}),
        (schemas.UploadResponse(), {"message": "m", "session_id": "s", "file": FILE_ROW}),
        (schemas.MessageResponse(), {"message": "Session deleted successfully"}),
        (schemas.SessionCreatedResponse(), {"message": "m", "session_id": "s"}),
    ],
)
def test_projection_equals_dump(schema: Schema, data: dict[str, object]) -> None:
    assert projector(schema)(data) == schema.dump(data)


def test_projection_drops_internal_fields() -> None:
    rendered = projector(schemas.FileSchema())(FILE_ROW)
    assert "file_path" not in rendered
    assert "session_id" not in rendered


def test_fields_that_transform_values_are_refused() -> None:
    class WithDate(Schema):
        when = fields.DateTime()

    with pytest.raises(TypeError, match="needs dump"):
        projector(WithDate())
