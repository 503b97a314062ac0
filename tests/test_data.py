"""Tests for jrnn.data: vocabularies, readers and batching."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jrnn.data import (
    Vocab,
    batches,
    bucket_length,
    bucket_lengths,
    lm_random_windows,
    lm_stream_batches,
    load_rt_polarity,
    pad_batch,
    read_conllu,
    read_text,
    read_tsv,
    split,
    tokenize_words,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UTF8_SAMPLES = ["안녕하세요", "café", "🙂", "naïve 안녕 🙂 Ünïcödé"]


def needs_data(sub: str) -> Path:
    path = DATA / sub
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return path


# --- vocabulary ---------------------------------------------------------------------------


def test_build_orders_by_count_then_token():
    # a:5, b:2, r:2, c:1, d:1
    vocab = Vocab.build("abracadabra")
    assert vocab.tokens == ("<pad>", "<unk>", "a", "b", "r", "c", "d")
    assert (vocab.pad_id, vocab.unk_id) == (0, 1)
    assert Vocab.build("abracadabra") == vocab


def test_build_min_count_max_size_and_specials():
    words = ["the", "cat", "the", "dog", "the", "cat", "<unk>", "bird"]
    assert Vocab.build(words, min_count=2).tokens == ("<pad>", "<unk>", "the", "cat")
    assert Vocab.build(words, max_size=3).tokens == ("<pad>", "<unk>", "the")
    vocab = Vocab.build(words, specials=("<pad>", "<unk>", "<bos>"))
    assert vocab.tokens[:4] == ("<pad>", "<unk>", "<bos>", "the")
    assert vocab.tokens.count("<unk>") == 1
    with pytest.raises(ValueError, match="max_size=1"):
        Vocab.build(words, max_size=1)


def test_encode_unknown_and_decode():
    vocab = Vocab.build(["a", "b", "b"])
    ids = vocab.encode(["b", "zzz", "a"])
    assert ids.dtype == np.int32
    assert ids.tolist() == [2, 1, 3]
    assert vocab.decode(ids) == ["b", "<unk>", "a"]
    with pytest.raises(ValueError, match="id 9 is out of range"):
        vocab.decode([9])
    with pytest.raises(ValueError, match="unique"):
        Vocab(("<pad>", "<unk>", "a", "a"))


@pytest.mark.parametrize("text", UTF8_SAMPLES)
def test_utf8_vocab_round_trip(tmp_path, text):
    vocab = Vocab.build(text)
    ids = vocab.encode(text)
    assert len(ids) == len(list(text))  # one id per code point
    assert "".join(vocab.decode(ids)) == text
    path = tmp_path / "vocab.json"
    vocab.save(path)
    raw = path.read_bytes()
    for ch in set(text) - {" "}:
        assert json.dumps(ch, ensure_ascii=False).encode("utf-8") in raw  # no \\u escapes
    loaded = Vocab.load(path)
    assert loaded == vocab
    assert "".join(loaded.decode(loaded.encode(text))) == text


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1))
def test_vocab_round_trip_property(text):
    vocab = Vocab.from_json(Vocab.build(text).to_json())
    assert "".join(vocab.decode(vocab.encode(text))) == text


def test_vocab_load_errors(tmp_path):
    path = tmp_path / "v.json"
    path.write_text('{"tokens":\n ["<pad>", "<unk>",\n oops]}', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:3: invalid JSON"):
        Vocab.load(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="tokens"):
        Vocab.load(path)


def test_tokenize_words():
    text = "It's GREAT, café! 'jackass' — rock 'n' roll, don’t foo_bar 3-d 안녕하세요"
    assert tokenize_words(text) == [
        "it's", "great", "café", "jackass", "rock", "n", "roll", "don't", "foo", "bar",
        "3", "d", "안녕하세요",
    ]  # fmt: skip


# --- readers ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", UTF8_SAMPLES)
def test_read_text_utf8(tmp_path, text):
    path = tmp_path / "corpus.txt"
    path.write_bytes(f"{text}\nline two {text}\n".encode())
    assert read_text(path) == f"{text}\nline two {text}\n"


def test_read_text_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        read_text(missing)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.txt: file is empty"):
        read_text(empty)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nok\nbad \xff byte\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3: not valid utf-8"):
        read_text(bad)


def test_read_tsv(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("pos\t안녕하세요 🙂\n\nneg\tcafé\twith tab\n  \n", encoding="utf-8")
    assert read_tsv(path) == (["안녕하세요 🙂", "café\twith tab"], ["pos", "neg"])


def test_read_tsv_errors(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("pos\tfine\n\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv:3: expected 'label<TAB>text'"):
        read_tsv(path)
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no 'label<TAB>text' rows"):
        read_tsv(path)


CONLLU = """\
# sent_id = 1
# text = Don't go.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_
3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t0:root\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = 2
1\t안녕\t안녕\tINTJ\tUH\t_\t0\troot\t_\t_
2\t🙂\t🙂\tSYM\tNFP\t_\t1\tdiscourse\t_\t_"""


def test_read_conllu(tmp_path):
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU, encoding="utf-8")  # no trailing blank line
    assert read_conllu(path) == [
        (["Do", "n't", "go", "."], ["AUX", "PART", "VERB", "PUNCT"]),
        (["안녕", "🙂"], ["INTJ", "SYM"]),
    ]
    assert read_conllu(path, tag="xpos")[0][1] == ["VBP", "RB", "VB", "."]
    with pytest.raises(ValueError, match="tag must be one of"):
        read_conllu(path, tag="deprel")


def test_read_conllu_errors(tmp_path):
    path = tmp_path / "bad.conllu"
    lines = CONLLU.split("\n")
    lines[4] = "2 n't not PART RB _ 3 advmod _ _"  # line 5: spaces instead of tabs
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.conllu:5: expected 10 tab-separated columns"):
        read_conllu(path)
    lines = CONLLU.split("\n")
    lines[5] = lines[5].replace("3\tgo", "7\tgo")  # line 6: token id jumps
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.conllu:6: expected token id 3, got '7'"):
        read_conllu(path)


def test_load_rt_polarity_utf8_and_latin1(tmp_path):
    (tmp_path / "rt-polarity.pos").write_bytes("a fine café\n\ngreat 🙂\n".encode())
    (tmp_path / "rt-polarity.neg").write_bytes("clichés abound\n".encode("latin-1"))
    texts, labels = load_rt_polarity(tmp_path)
    assert texts == ["a fine café", "great 🙂", "clichés abound"]
    assert labels.tolist() == [1, 1, 0] and labels.dtype == np.int32


def test_real_rt_polarity():
    texts, labels = load_rt_polarity(needs_data("rt-polarity"))
    assert len(texts) == 10662 and int(labels.sum()) == 5331
    assert all(texts) and not any("Ã" in t for t in texts)  # no mojibake
    assert "the rock is destined" in texts[0]


def test_real_conllu_and_text():
    sents = read_conllu(needs_data("ud-english-ewt") / "en_ewt-ud-dev.conllu")
    assert len(sents) == 2001
    assert all(len(w) == len(t) > 0 for w, t in sents)
    upos = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON"}
    upos |= {"PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"}
    assert {t for _, tags in sents for t in tags} <= upos
    assert len(read_text(needs_data("tinyshakespeare") / "input.txt")) == 1_115_394


# --- splits and batching ------------------------------------------------------------------


def test_split():
    parts = split(103, (0.8, 0.1, 0.1), seed=0)
    assert [len(p) for p in parts] == [82, 11, 10]  # boundaries round(82.4), round(92.7)
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    again = split(103, (0.8, 0.1, 0.1), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(parts[0], split(103, seed=1)[0])
    with pytest.raises(ValueError, match="sum to 1"):
        split(10, (0.5, 0.6))


def test_pad_batch():
    ids, lengths = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert ids.dtype == np.int32 and lengths.dtype == np.int32
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert lengths.tolist() == [3, 1]
    ids, _ = pad_batch([[1, 2]], pad_id=-1, length=4)
    assert ids.tolist() == [[1, 2, -1, -1]]


def test_pad_batch_errors():
    with pytest.raises(ValueError, match=r"seqs\[1\] has length 3 > length=2"):
        pad_batch([np.array([1]), np.array([1, 2, 3])], length=2)
    with pytest.raises(ValueError, match=r"seqs\[1\] must be a non-empty"):
        pad_batch([np.array([1]), np.array([], dtype=np.int32)])
    with pytest.raises(ValueError, match="seqs is empty"):
        pad_batch([])


def test_bucket_lengths():
    assert bucket_lengths(100, 4) == (25, 50, 75, 100)
    assert bucket_lengths(10, 3) == (4, 7, 10)
    assert bucket_lengths(2, 5) == (1, 2)
    assert bucket_length(26, (100, 25, 50)) == 50
    assert bucket_length(25, (25, 50)) == 25
    with pytest.raises(ValueError, match="length 51 exceeds the largest bucket 50"):
        bucket_length(51, (25, 50))


def _examples(n: int, max_len: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, max_len + 1, size=n)
    return [(np.full(k, i + 1, dtype=np.int32), i) for i, k in enumerate(lens)]


def test_batches_buckets_bound_shapes_and_cover_all_items():
    items = _examples(200, 50)
    buckets = bucket_lengths(50, 4)
    seen, shapes = [], set()
    for ids, lengths, labels in batches(items, 16, seed=0, buckets=buckets):
        shapes.add(ids.shape)
        assert ids.shape[1] in buckets and ids.shape[1] >= lengths.max()
        assert ids.shape[1] - lengths.max() < 13  # at most one bucket step of padding
        for row, n, label in zip(ids, lengths, labels, strict=True):
            assert n == len(items[label][0])
            assert (row[:n] == label + 1).all() and (row[n:] == 0).all()
        seen += labels.tolist()
    assert sorted(seen) == list(range(200))
    assert len({t for _, t in shapes}) <= 4
    unbucketed = {ids.shape for ids, _, _ in batches(items, 16, seed=0)}
    assert len(unbucketed) > len(shapes)


def test_batches_shuffle_reproducible():
    items = _examples(50, 5)

    def order(**kw):
        return [labels.tolist() for _, _, labels in batches(items, 8, **kw)]

    assert order(seed=3) == order(seed=3)
    assert order(seed=3) != order(seed=4)
    assert [i for b in order(seed=0, shuffle=False) for i in b] == list(range(50))
    assert [len(b) for b in order(seed=0, drop_last=True)] == [8] * 6


def test_batches_tags_padded():
    items = [(np.array([4, 5, 6]), np.array([1, 2, 3])), (np.array([7]), np.array([9]))]
    ids, lengths, tags = next(batches(items, 2, seed=0, shuffle=False, tag_pad_id=-1))
    assert ids.tolist() == [[4, 5, 6], [7, 0, 0]] and lengths.tolist() == [3, 1]
    assert tags.tolist() == [[1, 2, 3], [9, -1, -1]] and tags.dtype == np.int32
    bad = [(np.array([4, 5]), np.array([1]))]
    with pytest.raises(ValueError, match="do not match a sequence of length 2"):
        next(batches(bad, 1, seed=0))


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 300), batch_size=st.integers(1, 6), seq_len=st.integers(1, 9))
def test_lm_stream_batches_reconstruct_stream(n, batch_size, seq_len):
    ids = np.arange(n, dtype=np.int32) * 3 + 1  # value encodes position
    if n < batch_size * seq_len + 1:
        with pytest.raises(ValueError, match="need at least"):
            next(lm_stream_batches(ids, batch_size, seq_len))
        return
    chunks = list(lm_stream_batches(ids, batch_size, seq_len))
    assert all(x.shape == y.shape == (batch_size, seq_len) for x, y in chunks)
    inputs = np.concatenate([x for x, _ in chunks], axis=1)  # (B, L): each row contiguous
    targets = np.concatenate([y for _, y in chunks], axis=1)
    row = inputs.shape[1]
    assert row == (n - 1) // batch_size // seq_len * seq_len
    assert np.array_equal(inputs.reshape(-1), ids[: batch_size * row])
    assert np.array_equal(targets.reshape(-1), ids[1 : batch_size * row + 1])


def test_lm_random_windows():
    ids = np.arange(100, dtype=np.int32)
    x, y = lm_random_windows(ids, 32, 10, np.random.default_rng(0))
    assert x.shape == y.shape == (32, 10) and x.dtype == np.int32
    assert (np.diff(x, axis=1) == 1).all() and (y == x + 1).all()  # contiguous, shifted
    assert x.min() >= 0 and y.max() <= 99
    x2, _ = lm_random_windows(ids, 32, 10, np.random.default_rng(0))
    assert np.array_equal(x, x2)
    assert len(np.unique(x[:, 0])) > 1
    x, y = lm_random_windows(ids[:12], 64, 10, np.random.default_rng(1))
    assert set(x[:, 0].tolist()) == {0, 1} and y.max() == 11  # every valid start, no overrun
    with pytest.raises(ValueError, match="need more than seq_len=100"):
        lm_random_windows(ids, 2, 100, np.random.default_rng(0))
