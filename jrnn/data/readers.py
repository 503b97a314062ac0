"""Readers for plain text, TSV classification, CoNLL-U tagging, rt-polarity and JSON files.

Every reader decodes its file as UTF-8 (unless stated otherwise; a leading byte-order mark is
dropped, line ends are normalised to ``"\\n"``) and reports bad content as a
:class:`FileFormatError`, a ``ValueError`` whose message starts with ``"path:line:"`` (``"path:"``
when no one line is at fault). Whatever a file holds, a reader returns or raises that error; a
missing or unreadable file raises the ``OSError`` of ``open``.

Example:
    >>> import pathlib, tempfile
    >>> from jrnn.data import FileFormatError, read_tsv
    >>> path = pathlib.Path(tempfile.mkdtemp(), "train.tsv")
    >>> _ = path.write_bytes(b"pos\\tfine\\nno tab\\n")
    >>> try:
    ...     read_tsv(path)
    ... except FileFormatError as e:
    ...     print(e.line, str(e).split(": ", 1)[1])
    2 expected 'label<TAB>text', got 'no tab'
"""

from __future__ import annotations

import codecs
import json
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

PathType = str | PathLike[str]

_CONLLU_TAG_COLUMN = {"upos": 3, "xpos": 4}


class FileFormatError(ValueError):
    """A file whose content a reader cannot take.

    Attributes:
        path: the file.
        line: the 1-based line at fault, or None when no one line is.
    """

    def __init__(self, path: PathType, line: int | None, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.path = path
        self.line = line


def _lines(text: str) -> str:
    """``text`` with its line ends (``\\r\\n``, ``\\r``) as ``\\n``."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read(path: PathType, encoding: str = "utf-8") -> str:
    """Read a whole file, naming the line of the first undecodable byte on failure."""
    data = Path(path).read_bytes()
    if encoding == "utf-8" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return _lines(data.decode(encoding))
    except UnicodeDecodeError as e:
        line = _lines(data[: e.start].decode(encoding)).count("\n") + 1
        raise FileFormatError(path, line, f"not valid {encoding}: {e.reason}") from None


def read_json(path: PathType) -> Any:
    """Read a UTF-8 JSON file (a vocabulary, a checkpoint's record).

    Raises:
        FileFormatError: If the file is not valid UTF-8 or not valid JSON (with the line of the
            first error).
    """
    text = _read(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FileFormatError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise FileFormatError(path, None, f"invalid JSON: {e}") from None
    except RecursionError:
        raise FileFormatError(path, None, "invalid JSON: nested too deeply") from None


def read_text(path: PathType) -> str:
    """Read a plain UTF-8 text file, e.g. a character-level language-model corpus.

    Args:
        path: The file.

    Returns:
        Its full contents (newlines normalised to ``"\\n"``).

    Raises:
        FileNotFoundError: If the file does not exist.
        FileFormatError: If the file is empty or not valid UTF-8.
    """
    text = _read(path)
    if not text:
        raise FileFormatError(path, None, "file is empty")
    return text


def read_tsv(path: PathType) -> tuple[list[str], list[str]]:
    """Read ``label<TAB>text`` lines for classification; blank lines are skipped.

    Only the first tab separates: the text may itself contain tabs.

    Args:
        path: The file.

    Returns:
        ``(texts, labels)``, two lists of the same length.

    Raises:
        FileFormatError: On a non-blank line with no tab or an empty label, or if no rows.
    """
    texts, labels = [], []
    for lineno, line in enumerate(_read(path).split("\n"), start=1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab or not label.strip():
            raise FileFormatError(path, lineno, f"expected 'label<TAB>text', got {line[:60]!r}")
        labels.append(label.strip())
        texts.append(text.strip())
    if not texts:
        raise FileFormatError(path, None, "no 'label<TAB>text' rows found")
    return texts, labels


def read_conllu(path: PathType, *, tag: str = "upos") -> list[tuple[list[str], list[str]]]:
    """Read a CoNLL-U file as ``(words, tags)`` sentences for sequence tagging.

    Comment lines (``#``), multiword-token lines (id ``1-2``) and empty nodes (id ``1.1``) are
    skipped. Sentences end at a blank line or at the end of the file.

    Args:
        path: The file.
        tag: ``"upos"`` (column 4) or ``"xpos"`` (column 5).

    Returns:
        One ``(words, tags)`` pair of equal-length lists per sentence.

    Raises:
        FileFormatError: On a line without 10 tab-separated columns, an out-of-order token id,
            or if the file has no sentences.
    """
    if tag not in _CONLLU_TAG_COLUMN:
        raise ValueError(f"tag must be one of {sorted(_CONLLU_TAG_COLUMN)}, got {tag!r}")
    column = _CONLLU_TAG_COLUMN[tag]
    sentences: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    for lineno, line in enumerate(_read(path).split("\n"), start=1):
        if not line.strip():
            if words:
                sentences.append((words, tags))
                words, tags = [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise FileFormatError(
                path, lineno, f"expected 10 tab-separated columns, got {len(cols)}"
            )
        if "-" in cols[0] or "." in cols[0]:
            continue
        if cols[0] != str(len(words) + 1):
            expected = len(words) + 1
            raise FileFormatError(path, lineno, f"expected token id {expected}, got {cols[0]!r}")
        words.append(cols[1])
        tags.append(cols[column])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise FileFormatError(path, None, "no sentences found")
    return sentences


def load_rt_polarity(data_dir: PathType) -> tuple[list[str], np.ndarray]:
    """Load the rt-polarity sentence data (Pang & Lee 2005).

    Reads ``rt-polarity.pos`` and ``rt-polarity.neg`` (one sentence per line) from
    ``data_dir``. Each file is decoded as UTF-8, falling back to latin-1 (the encoding of the
    original distribution) when it is not valid UTF-8. Blank lines are skipped.

    Args:
        data_dir: The folder holding the two files.

    Returns:
        ``(texts, labels)``: all positive sentences then all negative ones, and `(N,)` int32
        labels, 1 for positive and 0 for negative.
    """
    texts: list[str] = []
    labels: list[int] = []
    for name, label in (("rt-polarity.pos", 1), ("rt-polarity.neg", 0)):
        path = Path(data_dir) / name
        try:
            content = _read(path)
        except FileFormatError:
            content = _read(path, encoding="latin-1")
        lines = [line.strip() for line in content.split("\n") if line.strip()]
        texts += lines
        labels += [label] * len(lines)
    return texts, np.asarray(labels, dtype=np.int32)
