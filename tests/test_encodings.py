# ruff: noqa: RUF001  (Greek and Cyrillic sample text looks like Latin to the linter)
"""CSV files as they come from the wild: legacy code pages, declared or not, and UTF-8 with a
stray byte. Each shape is checked in the upload's file object, through ``/rows`` and through
the download's charset, over multipart (in-process app), tus and the CLI (real processes)."""

from __future__ import annotations

import base64
import codecs
import io
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import FormData

from csvstore.analysis.content import CsvContentCheck, EncodingVerdict, _non_ascii_lines
from csvstore.analysis.pages import read_page
from csvstore.analysis.profile import CsvProfiler
from csvstore.analysis.rows import StoredProfile
from csvstore.errors import NotACsv
from tests.conftest import Client, assert_problem, upload_form
from tests.serverproc import ServerProcess
from tests.test_client import json_of, run_cli, stderr_of


@dataclass(frozen=True)
class Shape:
    name: str
    codec: str  # what the file is written in
    declared: str  # Python's name for it, as recorded when declared
    detected: frozenset[str]  # names a detector may give that decode this text exactly
    charsets: frozenset[str]  # the download's charset for those
    header: list[str]
    rows: list[list[str]]

    def text(self, sep: str = ",") -> str:
        return "".join(sep.join(row) + "\r\n" for row in [self.header, *self.rows])

    def data(self, sep: str = ",") -> bytes:
        return self.text(sep).encode(self.codec)


def _rows(names: list[str], cities: list[str], notes: list[str]) -> list[list[str]]:
    return [
        [str(i + 1), names[i % len(names)], cities[(i * 3) % len(cities)], notes[i % len(notes)]]
        for i in range(24)
    ]


GREEK = Shape(
    "greek",
    "iso-8859-7",
    "iso8859-7",
    frozenset({"iso8859-7", "cp1253"}),
    frozenset({"iso-8859-7", "windows-1253"}),
    ["id", "όνομα", "πόλη", "σχόλιο"],
    _rows(
        ["Λεωνίδας Παπαδόπουλος", "Μαρία Γεωργίου", "Νίκος Κωνσταντίνου", "Ελένη Δημητρίου"],
        ["Αθήνα", "Θεσσαλονίκη", "Πάτρα", "Ηράκλειο", "Λάρισα", "Βόλος", "Ιωάννινα"],
        [
            "Πολύ καλή εξυπηρέτηση και γρήγορη παράδοση",
            "Το προϊόν έφτασε σε άριστη κατάσταση",
            "Θα ήθελα να αλλάξω τη διεύθυνση αποστολής",
            "Η παραγγελία καθυστέρησε δύο εβδομάδες",
            "Δεν έλαβα ακόμη το τιμολόγιο του μήνα",
        ],
    ),
)
CYRILLIC = Shape(
    "cyrillic",
    "cp1251",
    "cp1251",
    frozenset({"cp1251"}),
    frozenset({"windows-1251"}),
    ["id", "имя", "город", "комментарий"],
    _rows(
        ["Александр Иванов", "Мария Смирнова", "Дмитрий Кузнецов", "Ольга Соколова"],
        ["Москва", "Санкт-Петербург", "Новосибирск", "Екатеринбург", "Казань", "Самара"],
        [
            "Очень хорошее обслуживание и быстрая доставка",
            "Товар пришёл в отличном состоянии",
            "Хотел бы изменить адрес доставки",
            "Заказ задержался на две недели",
            "Я ещё не получила счёт за этот месяц",
        ],
    ),
)
POLISH = Shape(
    "polish",
    "iso-8859-2",
    "iso8859-2",
    frozenset({"iso8859-2"}),
    frozenset({"iso-8859-2"}),
    ["id", "imię", "miasto", "komentarz"],
    _rows(
        ["Łukasz Wiśniewski", "Małgorzata Wójcik", "Grzegorz Kamiński", "Żaneta Szymańska"],
        ["Kraków", "Gdańsk", "Wrocław", "Łódź", "Poznań", "Szczecin", "Białystok"],
        [
            "Bardzo dobra obsługa i szybka dostawa",
            "Towar dotarł w doskonałym stanie",
            "Chciałbym zmienić adres dostawy",
            "Zamówienie opóźniło się o dwa tygodnie",
            "Nie otrzymałam jeszcze faktury za ten miesiąc",
        ],
    ),
)
# An Excel export from a Japanese Windows: Shift-JIS (cp932).
SHIFT_JIS = Shape(
    "shift-jis",
    "shift_jis",
    "shift_jis",
    frozenset({"cp932", "shift_jis"}),
    frozenset({"ms932", "shift_jis"}),
    ["id", "氏名", "都市", "コメント"],
    _rows(
        ["山田太郎", "佐藤花子", "鈴木一郎", "高橋美咲", "田中健太"],
        ["東京都", "大阪市", "名古屋市", "札幌市", "福岡市", "横浜市", "神戸市"],
        [
            "とても丁寧な対応で、配送も早かったです",
            "商品は完璧な状態で届きました",
            "配送先の住所を変更したいと思います",
            "注文が二週間遅れて届きました",
            "今月の請求書がまだ届いていません",
        ],
    ),
)
# A DOS export (cp850: its ü, 0x81, has no character in cp1252) and an old Mac Excel export.
DOS = Shape(
    "dos-cp850",
    "cp850",
    "cp850",
    frozenset({"cp850", "cp858", "cp437"}),  # the same letters in these three
    frozenset({"ibm850", "ibm858", "ibm437"}),
    ["Nr", "Kunde", "Straße", "Bemerkung"],
    _rows(
        ["Jürgen Müller", "Günther Schäfer", "Françoise Lefèvre", "Björn Größer"],
        ["Hauptstraße 5", "Königsallee 12", "Rue de l'Église 3", "Bahnhofstraße 44"],
        ["Lieferung über Zürich", "Rückruf erwünscht", "Übergabe nur persönlich", "Kühl lagern"],
    ),
)
MAC_ROMAN = Shape(
    "mac-roman",
    "mac_roman",
    "mac-roman",
    frozenset({"mac-roman"}),
    frozenset({"macintosh"}),
    ["réf", "client", "ville", "remarque"],
    _rows(
        ["Hélène Garçon", "François Crêpe", "Jérôme Bœuf", "Anaïs Lefèvre"],
        ["Besançon", "Orléans", "Nîmes", "Sète", "Fréjus", "Mâcon"],
        ["très bien reçu", "à rappeler après-midi", "livré où prévu", "façade abîmée"],
    ),
)
# Russian from DOS (cp866): every byte fits cp1252 too, so only a clear detection beats it.
DOS_CYRILLIC = Shape(
    "dos-cp866",
    "cp866",
    "cp866",
    frozenset({"cp866"}),
    frozenset({"ibm866"}),
    CYRILLIC.header,
    CYRILLIC.rows,
)
SHAPES = [GREEK, CYRILLIC, POLISH, SHIFT_JIS, DOS, MAC_ROMAN, DOS_CYRILLIC]


def _stray_byte_file() -> tuple[bytes, int]:
    """2.8 MB of valid UTF-8 whose last line has one cp1252 é: the file and that byte's offset."""
    lines = ["id,name,city\n"] + [f"{i},José Núñez,São Paulo\n" for i in range(200_001)]
    head = "".join(lines).encode()
    return head + b"200001,Jos\xe9,Lyon\n", len(head) + len(b"200001,Jos")


async def _upload(client: Client, data: bytes, **fields: str) -> Any:
    form = FormData()
    form.add_field("session_id", "s1")
    for name, value in fields.items():
        form.add_field(name, value)
    form.add_field("file", io.BytesIO(data), filename="export.csv", content_type="text/csv")
    resp = await client.post("/api/csv/upload", data=form)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["file"]


async def _all_rows(client: Client, file_id: str) -> Any:
    page = await (await client.get(f"/api/csv/files/{file_id}/rows?limit=1000")).json()
    assert page["next_offset"] is None
    return page


async def _downloaded(client: Client, file_id: str) -> tuple[str, bytes]:
    resp = await client.get(f"/api/csv/files/{file_id}/content")
    assert resp.status == 200
    media, _, charset = resp.headers["Content-Type"].partition("; charset=")
    assert media == "text/csv"
    return charset, await resp.read()


def _assert_reads_back(shape: Shape, file: Any, page: Any, charset: str, body: bytes) -> None:
    assert file["columns"] == shape.header
    assert file["row_count"] == len(shape.rows)
    assert file["invalid_bytes"] == 0
    assert file["first_invalid_offset"] is None
    assert page["columns"] == shape.header
    assert page["rows"] == shape.rows
    assert body == shape.data()
    assert body.decode(charset) == shape.text()  # the charset tells a client how to read it


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
async def test_legacy_code_pages_are_detected_not_guessed(
    client: Client, session: str, shape: Shape
) -> None:
    file = await _upload(client, shape.data())
    assert file["encoding"] in shape.detected
    assert file["encoding_source"] == "detected"
    assert 0 < file["encoding_confidence"] <= 1
    charset, body = await _downloaded(client, file["id"])
    assert charset in shape.charsets
    _assert_reads_back(shape, file, await _all_rows(client, file["id"]), charset, body)


@pytest.mark.parametrize("how", ["field", "part charset", "both"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
async def test_a_declared_encoding_is_recorded_as_declared(
    client: Client, session: str, shape: Shape, how: str
) -> None:
    form = FormData()
    form.add_field("session_id", session)
    if how != "part charset":
        form.add_field("encoding", shape.codec.upper())  # any spelling Python knows
    content_type = "text/csv" if how == "field" else f"text/csv; charset={shape.codec}"
    form.add_field("file", io.BytesIO(shape.data()), filename="x.csv", content_type=content_type)
    resp = await client.post("/api/csv/upload", data=form)
    assert resp.status == 201, await resp.text()
    file = (await resp.json())["file"]
    assert (file["encoding"], file["encoding_source"]) == (shape.declared, "declared")
    assert file["encoding_confidence"] == 1.0
    charset, body = await _downloaded(client, file["id"])
    _assert_reads_back(shape, file, await _all_rows(client, file["id"]), charset, body)


async def test_a_gb18030_byte_order_mark_names_the_encoding(client: Client, session: str) -> None:
    """GB18030 spells U+FEFF as 84 31 95 33; a file starting with it is GB18030 for sure, and
    the mark is no part of the first column's name."""
    text = "城市,人口\n北京,2154\n上海,2424\n"
    data = b"\x84\x31\x95\x33" + text.encode("gb18030")
    file = await _upload(client, data)
    assert (file["encoding"], file["encoding_source"]) == ("gb18030", "bom")
    assert file["encoding_confidence"] == 1.0
    assert (file["columns"], file["row_count"]) == (["城市", "人口"], 2)
    page = await _all_rows(client, file["id"])
    assert (page["columns"], page["rows"]) == (
        ["城市", "人口"],
        [["北京", "2154"], ["上海", "2424"]],
    )
    charset, body = await _downloaded(client, file["id"])
    assert (charset, body) == ("gb18030", data)


@pytest.mark.parametrize("bom", [codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE])
async def test_a_utf32_file_with_its_byte_order_mark_is_text(
    client: Client, session: str, bom: bytes
) -> None:
    """UTF-32's mark starts with UTF-16's (FF FE 00 00): read as UTF-16 the file was full of
    NULs and refused as binary. It is text, stored as a declared UTF-32 file is: unprofiled."""
    codec = "utf-32-le" if bom == codecs.BOM_UTF32_LE else "utf-32-be"
    data = bom + "a,b\n1,é\n".encode(codec)
    file = await _upload(client, data)
    assert (file["encoding"], file["encoding_source"], file["delimiter"]) == ("utf-32", "bom", None)
    charset, body = await _downloaded(client, file["id"])
    assert (charset, body) == ("utf-32", data)
    await assert_problem(await client.get(f"/api/csv/files/{file['id']}/rows"), 409)


async def test_a_header_one_name_short_in_a_detected_code_page_keeps_its_unnamed_column(
    client: Client, session: str
) -> None:
    """The header is decoded again once the code page is known: still one name short."""
    data = '"Gewicht","Größe"\n"1",26.5,1\n"2",27.5,2\n"3",28,3\n'.encode("cp1252")
    file = await _upload(client, data)
    assert file["encoding"] == "cp1252"
    assert (file["columns"], file["column_count"], file["ragged_rows"]) == (
        ["", "Gewicht", "Größe"],
        3,
        0,
    )


async def test_shift_jis_with_pipes_counts_no_trail_byte_as_a_delimiter(
    client: Client, session: str
) -> None:
    # ポ is 0x83 0x7C in Shift-JIS: its trail byte is "|".
    rows = [[str(i), "ポイントカード", "東京都"] for i in range(30)]
    text = "".join("|".join(row) + "\n" for row in [["id", "名前", "都市"], *rows])
    assert b"\x83|" in text.encode("shift_jis")
    file = await _upload(client, text.encode("shift_jis"), encoding="shift_jis")
    assert (file["delimiter"], file["column_count"], file["ragged_rows"]) == ("|", 3, 0)
    assert (await _all_rows(client, file["id"]))["rows"] == rows


async def test_utf8_with_one_stray_byte_stays_utf8(client: Client, session: str) -> None:
    data, stray = _stray_byte_file()
    file = await _upload(client, data)
    assert (file["encoding"], file["encoding_source"]) == ("utf-8", "detected")
    assert (file["invalid_bytes"], file["first_invalid_offset"]) == (1, stray)
    assert file["row_count"] == 200_002
    assert 0.99 < file["encoding_confidence"] <= 1
    first = await (await client.get(f"/api/csv/files/{file['id']}/rows?limit=1")).json()
    assert first["rows"] == [["0", "José Núñez", "São Paulo"]]
    last = await (await client.get(f"/api/csv/files/{file['id']}/rows?offset=200001")).json()
    assert last["rows"] == [["200001", "Jos\ufffd", "Lyon"]]
    charset, body = await _downloaded(client, file["id"])
    assert (charset, body) == ("utf-8", data)


async def test_a_mixed_export_with_few_letters_stays_utf8_and_plain_ascii_falls_back(
    client: Client, session: str
) -> None:
    # One UTF-8 é and one cp1252 é (two exports pasted together): UTF-8 with its stray byte
    # counted, not cp1252 for the whole file. Without a valid character, cp1252 reads it.
    head = "id,name\n" + "".join(f"{i},user {i}\n" for i in range(300))
    mixed = (head + "301,café\n").encode() + b"302,Jos\xe9\n"
    file = await _upload(client, mixed)
    assert (file["encoding"], file["invalid_bytes"]) == ("utf-8", 1)
    assert file["first_invalid_offset"] == mixed.index(b"\xe9")
    rows = (await _all_rows(client, file["id"]))["rows"]
    assert rows[-2:] == [["301", "café"], ["302", "Jos\ufffd"]]
    assert (await _downloaded(client, file["id"]))[0] == "utf-8"
    latin = head.encode() + b"302,Jos\xe9\n"
    file = await _upload(client, latin)
    assert (file["encoding"], file["encoding_source"]) == ("cp1252", "fallback")
    assert (await _all_rows(client, file["id"]))["rows"][-1] == ["302", "José"]


def test_dos_and_mac_code_pages_need_a_sample_and_utf8_needs_evidence() -> None:
    # Too short to tell among DOS and Mac code pages, which read any byte: refused, as before.
    for short in (
        "番号,氏名,都市,備考\r\n".encode("shift_jis"),
        "1,Plzeň\n2,ťuknout\n".encode("cp1250"),
    ):
        with pytest.raises(NotACsv):
            _verdict(short, 1 << 20)
    # One valid UTF-8 pair by chance in cp1252 or cp874 text is no mixed export.
    for text, codec in (("id,kommentar\n1,„Viel Spaß“\n", "cp1252"), ("1,ลำดับ\n", "cp874")):
        verdict = _verdict(text.encode(codec), 1 << 20)
        assert text.encode(codec).decode(verdict.encoding) == text, verdict


def test_a_mac_excel_export_of_mojibake_is_mac_roman_not_refused() -> None:
    # fivethirtyeight's ahca_polls.csv: chardet's first answer (ISO-8859) reads C1 controls.
    data = (
        b'Pollster,Favor,Text\nNBC/WSJ,23,"From what you have heard about this health care '
        b"legislation, do you think it is (ROTATE) \x81\xca\x89\xdb\xd3\x89\xdb\xd2 a good "
        b'idea or a bad idea?"\n'
    )
    assert _verdict(data, 1 << 20).encoding == "mac-roman"


def test_sampling_non_ascii_lines_is_linear_and_as_before() -> None:
    old = re.compile(rb"[^\r\n]*[\x80-\xff][^\r\n]*(?:\r\n|\r|\n)?")  # was quadratic
    pieces = [b"a", b",", b"\n", b"\r", b"\xe9", b"\r\n"]
    rnd = random.Random(7)
    for _ in range(3000):
        data = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 24)))
        end = rnd.randint(0, len(data))
        assert list(_non_ascii_lines(data, end)) == old.findall(data, 0, end), (data, end)
    long_line = b"a,b\n\xe9,1\n" + b"x" * 2_000_000 + b",2\n"  # 12 s at 40 KB before
    assert list(_non_ascii_lines(long_line, len(long_line))) == [b"\xe9,1\n"]


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_double_byte_text_with_valid_looking_pairs_is_not_taken_for_utf8(size: int) -> None:
    # GBK pairs such as C4 A3 are valid UTF-8 too (~1 per 3 bad bytes): still GBK.
    text = "编号,姓名,城市\n" + "".join(f"{i},王小明,北京市朝阳区\n" for i in range(40))
    verdict = _verdict(text.encode("gbk"), size)
    assert verdict.encoding in {"gbk", "gb18030", "gb2312"}
    assert text.encode("gbk").decode(verdict.encoding) == text


async def test_strict_refuses_utf8_with_a_stray_byte(client: Client, session: str) -> None:
    data, stray = _stray_byte_file()
    form = upload_form(data)
    form.add_field("strict", "true")
    problem = await assert_problem(await client.post("/api/csv/upload", data=form), 400)
    assert f"1 byte(s) are not valid utf-8, the first at byte offset {stray}" in problem["detail"]
    listed = await (await client.get(f"/api/csv/sessions/{session}")).json()
    assert listed["csv_files"] == []


async def test_bytes_that_do_not_decode_as_declared_are_refused_at_their_offset(
    client: Client, session: str
) -> None:
    data = GREEK.data()
    form = upload_form(data, content_type="text/csv; charset=utf-8")
    problem = await assert_problem(await client.post("/api/csv/upload", data=form), 400)
    first_bad = len(b"id,")  # the first Greek letter of the header
    assert problem["detail"].startswith("the file is not valid utf-8 as declared")
    assert f"at byte offset {first_bad}" in problem["detail"]
    # The same bytes declared as Shift-JIS: Greek 0xEF 0xED is no Shift-JIS pair.
    form = FormData()
    form.add_field("session_id", session)
    form.add_field("encoding", "shift_jis")
    form.add_field("file", io.BytesIO(data), filename="x.csv", content_type="text/csv")
    problem = await assert_problem(await client.post("/api/csv/upload", data=form), 400)
    assert "not valid shift_jis as declared" in problem["detail"]
    listed = await (await client.get(f"/api/csv/sessions/{session}")).json()
    assert listed["csv_files"] == []


async def test_a_utf16_declaration_without_a_byte_order_mark_is_refused(
    client: Client, session: str
) -> None:
    # Python's utf-16 and utf-32 decoders raise a bare UnicodeError (no offset) without a BOM.
    for encoding, text in (("utf-16", "a,b\n1,2\n"), ("utf-32", "a,b\n")):
        data = text.encode(f"{encoding}-le")
        form = FormData()
        form.add_field("session_id", session)
        form.add_field("encoding", encoding)
        form.add_field("file", io.BytesIO(data), filename="x.csv", content_type="text/csv")
        problem = await assert_problem(await client.post("/api/csv/upload", data=form), 400)
        assert f"not valid {encoding} as declared" in problem["detail"], problem
        assert "byte order mark" in problem["detail"], problem
    listed = await (await client.get(f"/api/csv/sessions/{session}")).json()
    assert listed["csv_files"] == []


async def test_declarations_that_cannot_be_used_are_refused(client: Client, session: str) -> None:
    data = CYRILLIC.data()
    for fields, content_type, words in [
        ({"encoding": "klingon-1"}, "text/csv", "unknown encoding"),
        ({"encoding": "rot13"}, "text/csv", "not a text encoding"),
        ({"encoding": "idna"}, "text/csv", "domain names"),  # 500s at /summary and a query
        ({}, "text/csv; charset=punycode", "domain names"),  # a 500 at the upload
        ({}, "text/csv; charset=nope", "unknown encoding"),
        ({"encoding": "cp1251"}, "text/csv; charset=koi8-r", "differ"),
    ]:
        form = FormData()
        form.add_field("session_id", session)
        for name, value in fields.items():
            form.add_field(name, value)
        form.add_field("file", io.BytesIO(data), filename="x.csv", content_type=content_type)
        problem = await assert_problem(await client.post("/api/csv/upload", data=form), 400)
        assert words in problem["detail"]
    after = upload_form(data)
    after.add_field("encoding", "cp1251")
    problem = await assert_problem(await client.post("/api/csv/upload", data=after), 400)
    assert "must come before the file part" in problem["detail"]


async def test_short_files_and_the_fallback_are_labelled(client: Client, session: str) -> None:
    short = await _upload(client, "nom;prix\ncafé;3,50 €\n".encode("cp1252"))
    assert (short["encoding"], short["encoding_source"]) == ("cp1252", "fallback")
    assert short["encoding_confidence"] is None  # too few letters for the detector
    assert (await _all_rows(client, short["id"]))["rows"] == [["café", "3,50 €"]]
    one_line = await _upload(client, "id,город\n1,Москва\n".encode("cp1251"))
    assert (one_line["encoding"], one_line["encoding_source"]) == ("cp1251", "detected")
    assert 0.05 <= one_line["encoding_confidence"] < 0.5
    ascii_only = await _upload(client, b"a,b\n1,2\n")
    assert (ascii_only["encoding"], ascii_only["encoding_source"]) == ("utf-8", "detected")
    bom = await _upload(client, codecs.BOM_UTF8 + "a,b\nü,2\n".encode())
    assert (bom["encoding"], bom["encoding_source"], bom["encoding_confidence"]) == (
        "utf-8-sig",
        "bom",
        1.0,
    )


# -- tus and the CLI, against the real server process --------------------------------------

TUS_V = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("encodings") / "data")
    proc.start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()


def _session(server: ServerProcess, session_id: str) -> str:
    resp = requests.post(
        f"{server.url}/api/csv/sessions", json={"session_id": session_id}, timeout=10
    )
    assert resp.status_code == 201, resp.text
    return session_id


def _tus(server: ServerProcess, session_id: str, data: bytes, **meta: str) -> requests.Response:
    values = {"session_id": session_id, "filename": "export.csv", **meta}
    header = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())
    created = requests.post(
        f"{server.url}/api/csv/tus/",
        headers={**TUS_V, "Upload-Length": str(len(data)), "Upload-Metadata": header},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    half = len(data) // 2  # two PATCHes: the analysis carries over between requests
    location = created.headers["Location"]
    for offset, part in ((0, data[:half]), (half, data[half:])):
        resp = requests.patch(
            f"{server.url}{location}",
            data=part,
            headers={
                **TUS_V,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
            timeout=60,
        )
        if resp.status_code != 204:
            return resp
    return resp


def _stored(server: ServerProcess, session_id: str) -> dict[str, Any]:
    resp = requests.get(f"{server.url}/api/csv/sessions/{session_id}", timeout=10)
    (file,) = resp.json()["csv_files"]
    return file  # type: ignore[no-any-return]


def _read_back(server: ServerProcess, shape: Shape, file: dict[str, Any]) -> None:
    page = requests.get(f"{server.url}/api/csv/files/{file['id']}/rows?limit=1000", timeout=10)
    download = requests.get(f"{server.url}/api/csv/files/{file['id']}/content", timeout=10)
    media, _, charset = download.headers["Content-Type"].partition("; charset=")
    assert media == "text/csv"
    _assert_reads_back(shape, file, page.json(), charset, download.content)


@pytest.mark.parametrize("declared", [False, True], ids=["detected", "declared"])
@pytest.mark.parametrize("shape", [GREEK, CYRILLIC, SHIFT_JIS], ids=lambda s: s.name)
def test_tus_uploads_detect_or_check_the_encoding(
    server: ServerProcess, shape: Shape, declared: bool
) -> None:
    session_id = _session(server, f"tus-{shape.name}-{declared}")
    meta = {"encoding": shape.codec} if declared else {}
    assert _tus(server, session_id, shape.data(), **meta).status_code == 204
    file = _stored(server, session_id)
    if declared:
        assert (file["encoding"], file["encoding_source"]) == (shape.declared, "declared")
    else:
        assert file["encoding"] in shape.detected
        assert file["encoding_source"] == "detected"
    _read_back(server, shape, file)


def test_tus_upload_of_utf8_with_a_stray_byte_stays_utf8(server: ServerProcess) -> None:
    session_id = _session(server, "tus-stray")
    data, stray = _stray_byte_file()
    assert _tus(server, session_id, data).status_code == 204
    file = _stored(server, session_id)
    assert (file["encoding"], file["encoding_source"]) == ("utf-8", "detected")
    assert (file["invalid_bytes"], file["first_invalid_offset"]) == (1, stray)
    last = requests.get(
        f"{server.url}/api/csv/files/{file['id']}/rows?offset=200001", timeout=10
    ).json()
    assert last["rows"] == [["200001", "Jos\ufffd", "Lyon"]]
    download = requests.get(f"{server.url}/api/csv/files/{file['id']}/content", timeout=10)
    assert download.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert download.content == data


def test_tus_strict_and_bad_declarations_are_refused(server: ServerProcess) -> None:
    session_id = _session(server, "tus-refusals")
    data, stray = _stray_byte_file()
    resp = _tus(server, session_id, data, strict="true")
    assert resp.status_code == 400, resp.text
    assert f"first at byte offset {stray}" in resp.json()["detail"]
    resp = _tus(server, session_id, GREEK.data(), encoding="utf-8")
    assert resp.status_code == 400, resp.text
    assert "not valid utf-8 as declared" in resp.json()["detail"]
    assert "at byte offset 3" in resp.json()["detail"]
    unknown = requests.post(
        f"{server.url}/api/csv/tus/",
        headers={
            **TUS_V,
            "Upload-Length": "10",
            "Upload-Metadata": "session_id "
            + base64.b64encode(session_id.encode()).decode()
            + ",filename eC5jc3Y=,encoding "
            + base64.b64encode(b"klingon-1").decode(),
        },
        timeout=10,
    )
    assert unknown.status_code == 400
    assert "unknown encoding" in unknown.text
    assert (
        requests.get(f"{server.url}/api/csv/sessions/{session_id}", timeout=10).json()["csv_files"]
        == []
    )


@pytest.mark.parametrize("size", ["small", "resumable"])
def test_cli_encoding_is_declared(server: ServerProcess, tmp_path: Path, size: str) -> None:
    """Small files go as a form, 8 MiB and more by tus: --encoding reaches the server both ways."""
    shape = CYRILLIC
    data = shape.data()
    if size == "resumable":
        data *= (8 * 1024 * 1024) // len(data) + 1
    path = tmp_path / "export.csv"
    path.write_bytes(data)
    session_id = _session(server, f"cli-{size}")
    result = run_cli(
        server.url, "upload", session_id, str(path), "--encoding", "windows-1251", "--json"
    )
    assert result.returncode == 0, stderr_of(result)
    (stored,) = json_of(result)["files"]
    file = stored["file"]
    assert (file["encoding"], file["encoding_source"]) == ("cp1251", "declared")
    if size == "small":
        _read_back(server, shape, _stored(server, session_id))
    else:
        assert file["row_count"] == (len(data) // len(shape.data())) * (len(shape.rows) + 1) - 1
    wrong = run_cli(server.url, "upload", session_id, str(path), "--encoding", "utf-8", "--resend")
    assert wrong.returncode == 1  # the server refused the file
    assert "not valid utf-8 as declared" in stderr_of(wrong)


# -- the same verdicts however the bytes are chunked ---------------------------------------

CHUNKINGS = [1, 2, 3, 7, 64, 1 << 20]


def _verdict(data: bytes, size: int, declared: str | None = None) -> EncodingVerdict:
    check = CsvContentCheck(declared)
    for start in range(0, len(data), size):
        check.feed(data[start : start + size])
    return check.finish()


@pytest.mark.parametrize("size", CHUNKINGS)
def test_stray_bytes_are_counted_wherever_chunks_split(size: int) -> None:
    good = "".join(f"{i},Zoë Łukasiewicz,Kraków\n" for i in range(300)).encode()
    data = good + b"x,Jos\xe9,Lyon\n" + good + "y,é".encode()[:-1]  # and a cut-off é at the end
    verdict = _verdict(data, size)
    assert (verdict.encoding, verdict.source) == ("utf-8", "detected")
    assert (verdict.invalid_bytes, verdict.first_invalid_offset) == (2, len(good) + 5)


def test_stray_bytes_clustered_at_the_start_do_not_relabel_a_utf8_file() -> None:
    lines = [f"{i},José Núñez,São Paulo\n".encode() for i in range(50_000)]
    for i in range(500):
        lines[i] = lines[i].replace(b"S\xc3\xa3o", b"S\xe3o")  # cp1252 ã in the first 500
    data = b"".join(lines)
    verdict = _verdict(data, 1 << 20)
    assert (verdict.encoding, verdict.invalid_bytes) == ("utf-8", 500)
    assert verdict.first_invalid_offset == data.index(b"\xe3")


@pytest.mark.parametrize("size", CHUNKINGS)
def test_detection_does_not_depend_on_chunking(size: int) -> None:
    for shape in SHAPES:
        verdict = _verdict(shape.data() * 4, size)
        assert verdict.encoding in shape.detected, (shape.name, verdict)
        assert verdict.source == "detected"


@pytest.mark.parametrize("size", CHUNKINGS)
def test_declared_encodings_name_the_first_bad_offset_wherever_chunks_split(size: int) -> None:
    with pytest.raises(NotACsv, match=r"at byte offset 3$"):
        _verdict(GREEK.data(), size, "utf-8")
    good = SHIFT_JIS.data()
    with pytest.raises(NotACsv, match=rf"at byte offset {len(good) + 2}$"):
        _verdict(good + b"9,\x81\x20\n", size, "shift_jis")  # 0x81 0x20 is no Shift-JIS pair
    assert _verdict(good, size, "shift_jis") == EncodingVerdict("shift_jis", "declared", 1.0)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 4096])
def test_shift_jis_profile_and_rows_do_not_depend_on_chunking(size: int) -> None:
    rows = [[str(i), "ポイントカード", "表計算ソフト", "ソニー"] for i in range(500)]
    text = "".join("|".join(row) + "\n" for row in [["id", "名前", "製品", "会社"], *rows])
    data = text.encode("shift_jis")
    profiler = CsvProfiler(encoding="shift_jis", checkpoint_every=64)
    for start in range(0, len(data), size):
        profiler.feed(data[start : start + size])
    profile = profiler.finish()
    assert (profile.row_count, profile.ragged_rows, profile.column_count) == (500, 0, 4)
    assert profile.columns == ["id", "名前", "製品", "会社"]
    stored = StoredProfile(
        encoding="shift_jis", delimiter="|", quotechar='"', checkpoints=profile.checkpoints
    )
    page = read_page(io.BytesIO(data), stored, 300, 3, max_bytes=1 << 20, cell_limit=100)
    assert page.rows == rows[300:303]


async def test_a_short_shift_jis_file_is_detected_however_unsure_the_detector(
    client: Client, session: str
) -> None:
    # 21 lines of names and ages: chardet says CP932 at 0.03 confidence, below what a
    # single-byte guess needs; every byte decodes in it, which chance rarely manages.
    names = [
        "名前",
        "山田",
        "佐藤",
        "鈴木",
        "田中",
        "高橋",
        "渡辺",
        "伊藤",
        "中村",
        "小林",
        "加藤",
        "吉田",
        "山本",
        "斎藤",
        "福田",
    ]
    text = "名前,年齢\r\n" + "".join(f"{n},{20 + i}\r\n" for i, n in enumerate(names))
    file = await _upload(client, text.encode("shift_jis"))
    assert (file["encoding"], file["encoding_source"]) == ("cp932", "detected")
    assert (file["columns"], file["row_count"]) == (["名前", "年齢"], len(names))
    rows = (await _all_rows(client, file["id"]))["rows"]
    assert rows[1] == ["山田", "21"]


async def test_a_large_file_with_cr_line_ends_is_sampled_as_it_streams(
    client: Client, session: str
) -> None:
    # An old export with CR line ends only, in cp1251. Its Cyrillic is near the start; the
    # sample must not wait for a LF that never comes (it then saw only the last 64 KiB, all
    # ASCII here, and the file was labelled cp1252, its names garbled).
    names = ["Иван Петров", "Мария Иванова", "Сергей Смирнов", "Анна Кузнецова"]
    head = "".join(f"{i},{names[i % 4]},Москва\r" for i in range(1, 41))
    data = ("id,name,city\r" + head).encode("cp1251")
    data += b"".join(b"%d,plain ascii name,Oslo\r" % i for i in range(41, 6_000))
    file = await _upload(client, data)
    assert (file["encoding"], file["encoding_source"]) == ("cp1251", "detected")
    assert file["row_count"] == 5_999
    page = await (await client.get(f"/api/csv/files/{file['id']}/rows?limit=2")).json()
    assert page["rows"] == [["1", "Мария Иванова", "Москва"], ["2", "Сергей Смирнов", "Москва"]]
