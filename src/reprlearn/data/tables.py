"""Tables of image paths (CSV/TSV with a header), shared by image sources and image-text pairs."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import fail

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_path", "filename", "file", "path", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "sentence", "description")
LABEL_COLUMNS = ("label", "class", "cls", "target", "category")


def split_spec(spec: str) -> tuple[Path, Path]:
    """``FILE.csv[?base=FOLDER]`` -> (the table, the folder its image paths start in: FOLDER or the table's)."""
    file_part, _, query = spec.partition("?")
    base = None
    for item in (q for q in query.split("&") if q):
        key, eq, value = item.partition("=")
        if key != "base" or not eq or not value:
            raise fail(f"{spec}: unknown option {item!r}; the only option is ?base=FOLDER (where image paths start)")
        base = Path(os.path.expanduser(value))
    table = Path(os.path.expanduser(file_part))
    if not table.is_file():
        raise fail(f"table {str(table)!r} does not exist; check the path")
    base = base if base is not None else table.parent
    if not base.is_dir():
        raise fail(f"{spec}: base folder {str(base)!r} does not exist; ?base= must name the images' folder")
    return table, base


def read_table(table: Path) -> tuple[list[tuple[int, int, list[str]]], list[str]]:
    """(row number from 1 after the header, line number of the row's start, fields), header."""
    delimiter = "\t" if table.suffix.lower() == ".tsv" else ","
    rows = []
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, [])
            line = reader.line_num + 1
            for row in reader:
                if any(c.strip() for c in row):
                    rows.append((len(rows) + 1, line, row))
                line = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise fail(f"{table} is not a readable UTF-8 {'TSV' if delimiter == chr(9) else 'CSV'} file "
                   f"({' '.join(str(e).split())[:60]})") from None
    return rows, [h.strip() for h in header]


def column(header: list[str], accepted: tuple[str, ...]) -> int | None:
    lower = [h.lower() for h in header]
    for name in accepted:
        if name in lower:
            return lower.index(name)
    return None
