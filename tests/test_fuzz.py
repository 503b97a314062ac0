"""Fuzzing the readers with hypothesis: whatever a file holds, each reader returns or raises
jrnn's own error naming the file (and the line, where one line is at fault), never another
exception; the ``jrnn`` command turns each such error into one ``error:`` line and exit code 1.

Readers: text, TSV, CoNLL-U, vocabularies (:class:`jrnn.data.FileFormatError`) and the JSON
record of a checkpoint step (:class:`jrnn.training.checkpoint.CheckpointError`). Inputs are raw
bytes, unicode text (line ends, tabs, a byte-order mark, lone surrogates) and line-structured
text close to each format. The examples are derandomized and bounded by ``max_examples``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from jrnn.data import FileFormatError, Vocab, read_conllu, read_text, read_tsv
from jrnn.training import checkpoint, runs
from jrnn.training.cli import app
from jrnn.training.options import Options
from jrnn.training.steps import TrainState, init_state
from jrnn.training.tasks.lm import LanguageModel

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
CLI = settings(FUZZ, max_examples=12)

# text made of the characters the formats care about, and of any others
FIELD = st.text(st.sampled_from(["a", "é", "🙂", " ", "\t", "_", "#", "-", ".", "1", "2"]),
                max_size=6)  # fmt: skip
LINE = st.one_of(
    st.lists(FIELD, min_size=1, max_size=11).map("\t".join),  # TSV rows, CoNLL-U tokens
    st.builds(
        lambda i, rest: f"{i}\t" + "\t".join(rest),
        st.integers(-1, 4),
        st.lists(FIELD, min_size=9, max_size=9),
    ),
    st.text(max_size=20),
)
ENDS = st.sampled_from(["\n", "\r\n", "\r", "\n\n"])
STRUCTURED = st.builds(
    lambda bom, lines, end: ("\ufeff" if bom else "") + end.join(lines),
    st.booleans(), st.lists(LINE, max_size=8), ENDS,
)  # fmt: skip
CONLLU = st.lists(  # sentences of numbered 10-column tokens, and what else a reader meets
    st.lists(
        st.one_of(
            st.lists(FIELD.filter(lambda f: "\t" not in f), min_size=9, max_size=9),
            st.sampled_from([["# sent_id = 1"], ["1-2", *"_" * 9], ["2.1", *"_" * 9]]),
        ),
        min_size=1,
        max_size=4,
    ),
    min_size=1,
    max_size=3,
).map(
    lambda sentences: "\n\n".join(
        "\n".join(
            "\t".join(fields) if len(fields) != 9 else f"{i}\t" + "\t".join(fields)
            for i, fields in enumerate(sentence, 1)
        )
        for sentence in sentences
    )
)
TEXT = st.one_of(STRUCTURED, CONLLU, st.text(max_size=200))
CONTENT = st.one_of(
    st.binary(max_size=200),
    TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),  # lone surrogates: not UTF-8
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
READERS: dict[str, Callable] = {
    "text": read_text,
    "tsv": read_tsv,
    "conllu": read_conllu,
    "xpos": lambda path: read_conllu(path, tag="xpos"),
    "vocab": Vocab.load,
}


def loads_or_names_the_file(read: Callable, path: Path, content: bytes):
    """``read(path)``'s result, or None after checking its FileFormatError."""
    path.write_bytes(content)
    try:
        return read(path)
    except FileFormatError as e:
        message = str(e)
        assert e.path == path and message.startswith(f"{path}:") and "\n" not in message
        if e.line is not None:
            lines = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
            assert message.startswith(f"{path}:{e.line}: ") and 1 <= e.line <= lines
        return None


@pytest.mark.parametrize("reader", sorted(READERS))
@FUZZ
@given(content=CONTENT)
def test_a_reader_loads_or_names_the_file_and_line(tmp_path, reader, content):
    result = loads_or_names_the_file(READERS[reader], tmp_path / f"fuzz.{reader}", content)
    if reader == "tsv" and result is not None:
        texts, labels = result
        assert len(texts) == len(labels) > 0 and all(labels)
    if reader in ("conllu", "xpos") and result is not None:
        assert result and all(len(words) == len(tags) > 0 for words, tags in result)


@FUZZ
@given(data=st.one_of(JSON, st.builds(lambda t: {"tokens": t}, st.lists(JSON, max_size=5))))
def test_a_vocabulary_of_any_json_loads_or_names_the_file(tmp_path, data):
    content = json.dumps(data).encode()
    vocab = loads_or_names_the_file(Vocab.load, tmp_path / "vocab.json", content)
    assert vocab is None or vocab.tokens == tuple(data["tokens"])


def test_json_nested_too_deeply_is_a_format_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(FileFormatError, match="nested too deeply"):
        Vocab.load(path)


# -- the record of a checkpoint step ----------------------------------------------------------


@pytest.fixture(scope="module")
def saved_step(tmp_path_factory) -> Path:
    """A checkpoint folder with one step, 3."""
    directory = tmp_path_factory.mktemp("saved")
    state = TrainState(jnp.asarray(3, jnp.int32), {"w": jnp.ones(3)}, ())
    checkpoint.save(directory, state, {"note": "x"})
    return directory


def _copy(saved: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "ckpt"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(saved, directory)
    return directory


RECORDS = st.one_of(
    CONTENT,
    st.fixed_dictionaries(
        {k: JSON for k in ("format", "jrnn", "meta", "meta_sha256", "files")}
    ).map(lambda record: json.dumps(record).encode()),
    st.builds(
        lambda files: {"format": 1, "jrnn": "0", "meta": {}, "files": files},
        st.dictionaries(st.sampled_from(["state/_METADATA", "x", "../x"]), JSON, max_size=3),
    ),
)


@FUZZ
@given(content=RECORDS)
def test_a_step_record_loads_or_is_one_checkpoint_error_naming_it(saved_step, tmp_path, content):
    directory = _copy(saved_step, tmp_path)
    if isinstance(content, dict):  # a well-formed record with fuzzed files and a true digest
        content["meta_sha256"] = checkpoint._meta_digest(content["meta"])
        content = json.dumps(content).encode()
    (directory / "3" / "jrnn.json").write_bytes(content)
    target = TrainState(jnp.asarray(0, jnp.int32), {"w": jnp.zeros(3)}, ())
    try:
        state, _ = checkpoint.restore(directory, lambda meta: target)
    except checkpoint.CheckpointError as e:
        message = str(e)
        assert "\n" not in message and "checkpoint step 3: " in message, message
        assert str(directory / "3") in message
    else:
        assert int(state.step) == 3


# -- the meta a task writes, as another jrnn could have written it -----------------------------

SMALL_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 64) | st.floats(-2, 2) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)  # small numbers: a record of this jrnn holds no 10**9-layer model


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A run folder with the checkpoint of a fresh language model, as ``jrnn train lm`` saves it."""
    run = tmp_path_factory.mktemp("lm")
    chars = Vocab.build("the cat sat on the mat.")
    model = LanguageModel(vocab_size=len(chars), embed=2, hidden=4)
    options = Options(hidden=4, embed=2, batch_size=2, seq_len=8)
    optimizer = runs.step_functions(model, options)[0]
    state = init_state(model, optimizer, jax.random.key(0), batch_size=2)
    meta = {"task": "lm", "model": model.config(), "options": dataclasses.asdict(options),
            "vocabs": {"chars": list(chars.tokens)}, "seconds": 1.0}  # fmt: skip
    checkpoint.save(run / "checkpoints", state, meta)
    return run


@CLI
@given(field=st.sampled_from(["task", "model", "options", "vocabs", "seconds", "model.hidden",
                              "model.cell", "model.layers", "options.batch_size", "options.lr",
                              "vocabs.chars", "options.new", "model.new"]),
       value=SMALL_JSON)  # fmt: skip
def test_a_meta_field_of_any_value_loads_or_is_refused_naming_the_file(
    lm_run, tmp_path, field, value
):
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(lm_run, run)
    ckpts = run / "checkpoints"
    path = ckpts / str(checkpoint.steps(ckpts)[-1]) / "jrnn.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    where = record["meta"]
    *parents, name = field.split(".")
    for parent in parents:
        where = where[parent]
    where[name] = value
    record["meta_sha256"] = checkpoint._meta_digest(record["meta"])
    path.write_text(json.dumps(record), encoding="utf-8")
    try:
        runs.load(run)
    except (checkpoint.CheckpointError, FileFormatError) as e:
        assert "\n" not in str(e) and str(ckpts.resolve()) in str(e), str(e)
    result = CliRunner().invoke(app, ["sample", "--ckpt", str(run), "--length", "5"])
    if result.exit_code:
        _one_error_line(result)


# -- the command ------------------------------------------------------------------------------


def _one_error_line(result, expected: str | None = None) -> None:
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if expected is not None:
        assert lines[0] == f"error: {expected}"


COMMANDS = {  # a reader, and the command that reads a file with it
    "text": (read_text, lambda path: ["train", "lm", "--text", path]),
    "tsv": (read_tsv, lambda path: ["train", "classify", "--train", path, "--valid", path]),
    "conllu": (read_conllu, lambda path: ["train", "tag", "--train", path, "--valid", path]),
}


@pytest.mark.parametrize("reader", sorted(COMMANDS))
@CLI
@given(content=CONTENT)
def test_the_command_turns_a_format_error_into_one_line(tmp_path, reader, content):
    read, command = COMMANDS[reader]
    path = tmp_path / f"fuzz.{reader}"
    path.write_bytes(content)
    try:
        read(path)
    except FileFormatError as e:
        result = CliRunner().invoke(app, [*command(str(path)), "--out", str(tmp_path / "out")])
        _one_error_line(result, str(e))


@CLI
@given(content=RECORDS.filter(lambda c: isinstance(c, bytes)))
def test_the_command_turns_a_bad_record_into_one_line(saved_step, tmp_path, content):
    directory = _copy(saved_step, tmp_path)
    (directory / "3" / "jrnn.json").write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.latest(directory)
    _one_error_line(CliRunner().invoke(app, ["sample", "--ckpt", str(directory)]), str(error.value))
