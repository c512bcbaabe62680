"""Which detector names the code page of a non-UTF-8 CSV: chardet (as csvstore calls it) or
charset-normalizer. Right = the detected codec decodes the file to exactly its text.

    .venv/bin/python -m bench.encoding_detection    # needs charset-normalizer installed
"""

from __future__ import annotations

import time

import chardet
import charset_normalizer

from csvstore.analysis.content import CsvContentCheck
from tests.test_encodings import CYRILLIC, GREEK, POLISH, SHIFT_JIS, Shape

FRENCH = Shape(
    "french",
    "cp1252",
    "cp1252",
    frozenset({"cp1252"}),
    frozenset(),
    ["id", "nom", "ville", "commentaire"],
    [
        [str(i), name, city, note]
        for i, (name, city, note) in enumerate(
            [
                ("François Lefèvre", "Besançon", "Livraison très rapide, merci beaucoup"),
                ("Hélène Dupré", "Orléans", "Le colis était abîmé à l'arrivée"),
                ("Jérôme Müller", "Zürich", "Je voudrais changer l'adresse de livraison"),
                ("Cécile Noël", "Saint-Étienne", "Facture reçue, paiement effectué"),
            ]
            * 6
        )
    ],
)
CASES = [
    (GREEK, "iso-8859-7"),
    (GREEK, "cp1253"),
    (CYRILLIC, "cp1251"),
    (CYRILLIC, "koi8-r"),
    (POLISH, "iso-8859-2"),
    (POLISH, "cp1250"),
    (SHIFT_JIS, "shift_jis"),
    (SHIFT_JIS, "euc-jp"),
    (FRENCH, "cp1252"),
]


def _csvstore(data: bytes) -> str | None:
    check = CsvContentCheck()
    check.feed(data)
    return check.finish().encoding


def _normalizer(data: bytes) -> str | None:
    best = charset_normalizer.from_bytes(data).best()
    return None if best is None else best.encoding


def main() -> None:
    print(f"chardet {chardet.__version__}, charset-normalizer {charset_normalizer.__version__}")
    print("| file | rows | csvstore (chardet) | charset-normalizer |")
    print("| --- | --- | --- | --- |")
    score = {"csvstore": 0, "normalizer": 0}
    for shape, codec in CASES:
        for rows in (1, 6, 24):
            text = "".join(",".join(r) + "\r\n" for r in [shape.header, *shape.rows[:rows]])
            data = text.encode(codec)
            cells = []
            for key, detect in (("csvstore", _csvstore), ("normalizer", _normalizer)):
                name = detect(data)
                right = name is not None and data.decode(name, "replace") == text
                score[key] += right
                cells.append(f"{name} {'ok' if right else 'WRONG'}")
            print(f"| {shape.name} {codec} | {rows} | {cells[0]} | {cells[1]} |")
    print(f"right: csvstore {score['csvstore']}, charset-normalizer {score['normalizer']}")
    for shape, codec in CASES[::2]:
        sample = (shape.text() * 200).encode(codec)[: 64 * 1024]
        sample = sample[: sample.rindex(b"\n") + 1]
        chardet.detect(sample)  # models loaded once per process
        timings = []
        for detect in (_csvstore, _normalizer):
            started = time.perf_counter()
            detect(sample)
            timings.append((time.perf_counter() - started) * 1000)
        print(f"64 KiB {codec}: csvstore {timings[0]:.1f} ms, normalizer {timings[1]:.1f} ms")


if __name__ == "__main__":
    main()
