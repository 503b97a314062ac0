"""Readers for plain text, TSV classification, CoNLL-U tagging and rt-polarity files.

Every reader decodes its file as UTF-8 (unless stated otherwise) and reports bad input as a
``ValueError`` whose message starts with ``"path:line:"``.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

PathType = str | PathLike[str]

_CONLLU_TAG_COLUMN = {"upos": 3, "xpos": 4}


def _read(path: PathType, encoding: str = "utf-8") -> str:
    """Read a whole file, naming the line of the first undecodable byte on failure."""
    with open(path, encoding=encoding) as f:
        try:
            return f.read()
        except UnicodeDecodeError as e:
            line = e.object.count(b"\n", 0, e.start) + 1
            raise ValueError(f"{path}:{line}: not valid {encoding}: {e.reason}") from None


def read_text(path: PathType) -> str:
    """Read a plain UTF-8 text file, e.g. a character-level language-model corpus.

    Args:
        path: The file.

    Returns:
        Its full contents (newlines normalised to ``"\\n"``).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If the file is empty or not valid UTF-8.
    """
    text = _read(path)
    if not text:
        raise ValueError(f"{path}: file is empty")
    return text


def read_tsv(path: PathType) -> tuple[list[str], list[str]]:
    """Read ``label<TAB>text`` lines for classification; blank lines are skipped.

    Only the first tab separates: the text may itself contain tabs.

    Args:
        path: The file.

    Returns:
        ``(texts, labels)``, two lists of the same length.

    Raises:
        ValueError: On a non-blank line with no tab or an empty label, or if no rows.
    """
    texts, labels = [], []
    for lineno, line in enumerate(_read(path).split("\n"), start=1):
        if not line.strip():
            continue
        label, tab, text = line.partition("\t")
        if not tab or not label.strip():
            raise ValueError(f"{path}:{lineno}: expected 'label<TAB>text', got {line[:60]!r}")
        labels.append(label.strip())
        texts.append(text.strip())
    if not texts:
        raise ValueError(f"{path}: no 'label<TAB>text' rows found")
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
        ValueError: On a line without 10 tab-separated columns, an out-of-order token id,
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
            raise ValueError(f"{path}:{lineno}: expected 10 tab-separated columns, got {len(cols)}")
        if "-" in cols[0] or "." in cols[0]:
            continue
        if cols[0] != str(len(words) + 1):
            expected = len(words) + 1
            raise ValueError(f"{path}:{lineno}: expected token id {expected}, got {cols[0]!r}")
        words.append(cols[1])
        tags.append(cols[column])
    if words:
        sentences.append((words, tags))
    if not sentences:
        raise ValueError(f"{path}: no sentences found")
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
        except ValueError:
            content = _read(path, encoding="latin-1")
        lines = [line.strip() for line in content.split("\n") if line.strip()]
        texts += lines
        labels += [label] * len(lines)
    return texts, np.asarray(labels, dtype=np.int32)
