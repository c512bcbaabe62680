"""The header vote: does the first record name the columns of the rows after it?"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Final

_NUMBER_RE: Final = re.compile(  # dollar amounts too (-$3.50, $1,500.00: banks, QuickBooks)
    r"[-+]?\$?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][-+]?\d+)?%?"
    r"|[-+]?\$?\d{1,3}(?:[,. \u00a0']\d{3})+(?:[.,]\d+)?"
)
_DATE_RE: Final = re.compile(
    r"\d{4}-\d{1,2}-\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[-+]\d{2}:?\d{2})?)?"
    r"|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}(?: \d{1,2}:\d{2}(?::\d{2})?)?"
    r"|\d{1,2}:\d{2}(?::\d{2})?"
)
_BOOLEANS: Final = frozenset({"true", "false", "yes", "no"})
_YEAR_RE: Final = re.compile(r"(?:1[89]|20)\d\d")
_WHOLE_RE: Final = re.compile(r"[0-9]{1,9}")


def _kind(cell: str) -> str:
    value = cell.strip()
    if not value:
        return "empty"
    # Fast paths, the same answers as the patterns: every upload's vote runs this per cell.
    first = value[0]
    if first.isalpha():
        return "bool" if value.lower() in _BOOLEANS else "text"
    if value.isascii() and value.isdigit():
        return "number"
    if _NUMBER_RE.fullmatch(value):
        return "number"
    if _DATE_RE.fullmatch(value):
        return "date"
    if value.lower() in _BOOLEANS:
        return "bool"
    return "text"


def _column_re(cell: re.Pattern[str]) -> re.Pattern[str]:
    """Cells joined by NUL (which no accepted CSV holds), each matching ``cell`` whole."""
    return re.compile(f"(?:{cell.pattern})(?:\x00(?:{cell.pattern}))*")


_NUMBER_COLUMN_RE: Final = _column_re(_NUMBER_RE)
_DATE_COLUMN_RE: Final = _column_re(_DATE_RE)


def _column_kinds(values: list[str]) -> set[str]:
    """``{_kind(v) for v in values}``, by one match over a column of numbers or dates (no
    cell matches both patterns) and C-level passes over free text."""
    stripped = list(map(str.strip, values))
    joined = "\x00".join(stripped)
    if _NUMBER_COLUMN_RE.fullmatch(joined):
        return {"number"}
    if _DATE_COLUMN_RE.fullmatch(joined):
        return {"date"}
    starts = "".join([value[:1] for value in stripped])
    text_only = len(starts) == len(stripped) and starts.isalpha()
    if text_only and _BOOLEANS.isdisjoint(map(str.lower, stripped)):
        return {"text"}
    return {_kind(value) for value in values}


def _plain_names(cells: list[str]) -> bool:
    """Cells that read like column names: all non-empty text, mostly distinct. The first may
    be empty when others follow: the corner above row names (R's ``write.csv``: ``"","x","y"``)."""
    names = [cell.strip() for cell in cells]
    if len(names) > 2 and not names[0]:
        names = names[1:]
    distinct = 2 * len(set(names)) > len(names) or len(names) == 1
    return distinct and all(name and _kind(name) == "text" for name in names)


def _counts_up(values: Sequence[str]) -> bool:
    """Consecutive integers from 0 or 1: ``0, 1, 2``."""
    if not values or not all(v.isascii() and v.isdigit() and len(v) < 10 for v in values):
        return False
    start = int(values[0])
    return start in (0, 1) and all(int(v) == start + i for i, v in enumerate(values))


def _row_index_corner(first: list[str], rows: list[list[str]]) -> bool:
    """pandas' default index: an empty corner over a first column, or names (a transposed
    frame), counting up from 0 or 1 (``,0,1,2`` over ``0,0.26,...``)."""
    if len(first) < 2 or first[0].strip() or len(rows) < 2:
        return False
    if _counts_up([name.strip() for name in first[1:]]) and len(first) > 2:
        return True
    return _counts_up([row[0].strip() for row in rows if row])


def _shape(value: str) -> str:
    """Runs of letters as ``a`` and of digits as ``9``: ``https://x.org/p/12`` is ``a://a.a/a/9``."""
    return _DIGITS_RE.sub("9", _LETTERS_RE.sub("a", value.strip()))


# Words joined by _ or - are one run: snake_case values under a snake_case name are words.
_LETTERS_RE: Final = re.compile(r"[^\W\d_]+(?:[-_][^\W\d_]+)*")
_DIGITS_RE: Final = re.compile(r"\d+")


def _shape_vote(head: str, values: list[str]) -> int:
    """-1: shaped as most of its column (URLs over URLs); +1: not (``url`` over URLs)."""
    if all(value.replace(" ", "").isalpha() for value in values):
        return 0  # words, the shape of names too: no regex over every cell
    shapes = Counter(map(_shape, values))
    common, count = shapes.most_common(1)[0]
    if 5 * count < 4 * len(values) or not set(common) - {"a", " "}:  # words: names' shape too
        return 0
    if _shape(head) != common:
        return 1
    # A row if it shares the values' words or has none (10.0.0.1); "Period 1" over "Room 2" not.
    words = set(_WORDS_RE.findall(head))
    if not words or ("9" in common and _PUNCTUATION_RE.search(common)):  # "Dec 8, 2022"
        return -1
    shared = sum(1 for value in values if words & set(_WORDS_RE.findall(value)))
    return -1 if 2 * shared >= len(values) else 0


_WORDS_RE: Final = re.compile(r"[^\W\d_]+")
_PUNCTUATION_RE: Final = re.compile(r"[,.:/@]")


def _looks_like_header(first: list[str], rows: list[list[str]]) -> bool:
    """Typed columns vote first (as in csv.Sniffer.has_header), then names, then text
    lengths: docs/design/profiler.md (the header vote)."""
    typed = 0
    by_length = 0
    texts: list[tuple[str, list[str]]] = []
    years: list[int] = []  # heads that are years over columns of numbers that are not
    whole: list[int] = []  # whole-number heads over columns of fractions (400 over 0.31)
    width = len(first)
    columns: Iterator[Sequence[str]] | None = None
    if rows and all(len(row) == width for row in rows):
        columns = zip(*rows, strict=True)
    for column, head in enumerate(first):
        if columns is not None:
            values = list(filter(str.strip, next(columns)))
        else:
            values = [row[column] for row in rows if column < len(row) and row[column].strip()]
        if not values:
            continue
        kinds = _column_kinds(values)
        if len(kinds) == 1 and kinds != {"text"}:
            head_kind = _kind(head)
            if head_kind in kinds:
                typed -= 1
                if _YEAR_RE.fullmatch(head.strip()) and not all(map(_YEAR_RE.fullmatch, values)):
                    years.append(int(head))
                elif _WHOLE_RE.fullmatch(head.strip()) and _names_fractions(head, values):
                    whole.append(int(head))
            elif (
                head_kind == "text"
                or (head_kind == "number" and kinds == {"bool"})
                or (head_kind in ("date", "bool") and kinds == {"number"})
            ):
                typed += 1  # a name: text; a number over booleans; a date or Yes over numbers
        elif kinds == {"text"} and len(values) > 1:
            lengths = set(map(len, values))
            if len(lengths) == 1:
                by_length += -1 if len(head) in lengths else 1
            texts.append((head, values))
    # Years in order over other numbers name them (Country,1990,1991), and three or more
    # whole numbers in order over fractions: a spectrum's wavelengths (400,410,420).
    if len(years) >= 2 and _in_order(years):
        typed += 2 * len(years)
    if len(whole) >= 3 and _in_order(whole):
        typed += 2 * len(whole)
    if _row_index_corner(first, rows):
        return True
    if typed:
        return typed > 0
    plain = _plain_names(first)
    heads_of_words_vote_no_row = all(head.replace(" ", "").isalpha() for head, _ in texts)
    if plain and heads_of_words_vote_no_row:
        return True
    if by_shape := sum(_shape_vote(head, values) for head, values in texts):
        return by_shape > 0
    if plain:
        return True
    return by_length > 0


def _in_order(numbers: list[int]) -> bool:
    ascending = sorted(set(numbers))
    return numbers in (ascending, ascending[::-1])


def _quoted_fields(
    raw: str, delimiter: str, quotechar: str, skip_space: bool = False
) -> list[bool]:
    """For each field of one raw record: does it open with the quote character?"""
    flags: list[bool] = []
    start, in_quote, closed = True, False, False
    for ch in raw.rstrip("\r\n"):
        if in_quote:
            if ch == quotechar:
                in_quote, closed = False, True
            continue
        if closed and ch == quotechar:  # "" inside a quoted field
            in_quote, closed = True, False
            continue
        closed = False
        if start and skip_space and ch == " ":
            continue
        if start:
            flags.append(ch == quotechar)
            start = False
            in_quote = ch == quotechar
        elif ch == delimiter:
            start = True
    if start:
        flags.append(False)  # an empty last field
    return flags


def _quoted_numbers_name_columns(
    first: list[str],
    rows: list[list[str]],
    raw_first: str,
    raw_rows: list[str],
    delimiter: str,
    quotechar: str,
    skip_space: bool = False,
) -> bool:
    """Numbers quoted in the first record over bare numbers in every row: names written as
    text (R's write.csv: ``"","142.24"`` over ``"9.4",0``; Python's QUOTE_NONNUMERIC)."""
    numeric = [j for j, head in enumerate(first) if _kind(head) == "number"]
    heads = _quoted_fields(raw_first, delimiter, quotechar, skip_space)
    if len(numeric) < 2 or len(heads) != len(first) or not all(heads[j] for j in numeric):
        return False
    for row, raw in zip(rows, raw_rows, strict=True):
        quoted = _quoted_fields(raw, delimiter, quotechar, skip_space)
        if len(quoted) != len(row) or any(quoted[j] for j in numeric if j < len(row)):
            return False
    for j in numeric:
        values = [row[j] for row in rows if j < len(row) and row[j].strip()]
        if not values or _column_kinds(values) != {"number"}:
            return False
    return True


def _names_fractions(head: str, values: list[str]) -> bool:
    """A whole number over fractions far from it (400 over 0.31), not one of their kind."""
    if not all("." in v for v in values):
        return False
    try:
        numbers = [abs(float(v.replace(",", ""))) for v in values]
    except ValueError:
        return False
    return not min(numbers) / 2 <= int(head) <= 2 * max(numbers)
