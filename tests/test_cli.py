"""Tests for the ``jrnn`` command, run in-process with typer's CliRunner on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jrnn.training import runs
from jrnn.training.cli import app
from jrnn.training.tasks import tag

RUNNER = CliRunner()

TEXT = "안녕하세요 café 🙂 the cat sat on the mat. " * 12
TSV = "".join(
    f"{label}\t{text}\n"
    for label, text in [
        ("pos", "정말 좋아요 great film 🙂"),  # four words each: one padded length
        ("neg", "bad plot naïve film"),
        ("pos", "great fun 정말 film"),
        ("neg", "bad acting, bad film 🙁"),
    ]
    * 2
)
CONLLU = """# sent_id = 1
1	The	the	DET	DT	_	2	det	_	_
2	cat	cat	NOUN	NN	_	3	nsubj	_	_
3-4	can't	_	_	_	_	_	_	_	_
3	ca	can	AUX	MD	_	0	root	_	_
4	n't	not	PART	RB	_	3	advmod	_	_
5	run	run	VERB	VB	_	3	xcomp	_	_
5.1	ran	run	VERB	VBD	_	_	_	_	_

1	A	a	DET	DT	_	2	det	_	_
2	café	café	NOUN	NN	_	3	nsubj	_	_
3	runs	run	VERB	VBZ	_	0	root	_	_
4	very	very	ADV	RB	_	5	advmod	_	_
5	fast	fast	ADV	RB	_	3	advmod	_	_
"""
TINY = ["--hidden", "16", "--embed", "8", "--seed", "1"]


def invoke(*args: str | Path):
    return RUNNER.invoke(app, [str(a) for a in args])


def assert_ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)


def assert_one_line_error(result, *fragments: str):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    paths = {"text": root / "text.txt", "tsv": root / "train.tsv", "conllu": root / "t.conllu"}
    # the CoNLL-U sentences twice: words seen once are <unk> to the word vocabulary
    for path, content in zip(paths.values(), (TEXT, TSV, CONLLU + "\n" + CONLLU), strict=True):
        path.write_text(content, encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def lm_run(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm")
    args = ["--text", files["text"], "--batch-size", "2", "--seq-len", "16", "--lr", "0.02"]
    result = invoke(
        "train", "lm", *args, *TINY, "--epochs", "3", "--schedule", "constant", "--out", out
    )
    assert_ok(result)
    assert "sample:" in result.stdout and "valid_bpc" in result.stdout
    return out


def test_train_lm_writes_metrics_and_a_sample(lm_run):
    metrics = json.loads((lm_run / "metrics.json").read_text(encoding="utf-8"))
    for key in ("valid_loss", "valid_accuracy", "valid_bpc", "steps", "seconds"):
        assert key in metrics
    curve = [loss for _, loss in metrics["loss_curve"]]
    assert curve[-1] < 0.6 * curve[0]
    assert metrics["compiled_shapes"] == 1


def test_resume_follows_the_uninterrupted_curve(lm_run, files, tmp_path):
    args = [
        "--text",
        files["text"],
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--lr",
        "0.02",
        *TINY,
        "--schedule",
        "constant",
        "--out",
        tmp_path,
    ]
    assert_ok(invoke("train", "lm", *args, "--epochs", "1"))
    result = invoke("train", "lm", *args, "--epochs", "3", "--resume")
    assert_ok(result)
    assert "resuming from step" in result.stderr
    full = json.loads((lm_run / "metrics.json").read_text())["loss_curve"]
    resumed = json.loads((tmp_path / "metrics.json").read_text())["loss_curve"]
    assert resumed and resumed == full[len(full) - len(resumed) :]


def test_sample_and_eval(lm_run, files):
    first = invoke("sample", "--ckpt", lm_run, "--prompt", "the ", "--length", "40", "--seed", "3")
    again = invoke("sample", "--ckpt", lm_run, "--prompt", "the ", "--length", "40", "--seed", "3")
    assert_ok(first)
    assert first.stdout == again.stdout and first.stdout.startswith("the ")
    assert len(first.stdout.rstrip("\n")) >= 4 + 30
    result = invoke("eval", "--ckpt", lm_run, "--data", files["text"])
    assert_ok(result)
    assert "loss" in result.stdout and "bpc" in result.stdout


def test_train_classify_and_eval(files, tmp_path):
    tsv = files["tsv"]
    result = invoke(
        "train",
        "classify",
        "--train",
        tsv,
        "--valid",
        tsv,
        "--test",
        tsv,
        *TINY,
        "--cell",
        "gru",
        "--no-bidirectional",
        "--batch-size",
        "4",
        "--epochs",
        "12",
        "--dropout",
        "0",
        "--lr",
        "0.02",
        "--out",
        tmp_path,
    )
    assert_ok(result)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["valid_accuracy"] == 1.0 and metrics["test_accuracy"] == 1.0
    assert_ok(invoke("eval", "--ckpt", tmp_path, "--data", tsv))
    # a classifier cannot generate, nor be resumed as another task
    assert_one_line_error(invoke("sample", "--ckpt", tmp_path), "only a language model")
    resumed = invoke("train", "lm", "--text", files["text"], "--out", tmp_path, "--resume")
    assert_one_line_error(resumed, "is for task 'classify'")


def test_train_tag_and_eval(files, tmp_path):
    conllu = files["conllu"]
    result = invoke(
        "train",
        "tag",
        "--train",
        conllu,
        "--valid",
        conllu,
        *TINY,
        "--cell",
        "rnn",
        "--no-chars",
        "--matmul-dtype",
        "bfloat16",  # mixed precision learns the toy set too
        "--batch-size",
        "2",
        "--epochs",
        "15",
        "--dropout",
        "0",
        "--lr",
        "0.03",
        "--out",
        tmp_path,
    )
    assert_ok(result)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["valid_accuracy"] == 1.0
    assert_ok(invoke("eval", "--ckpt", tmp_path, "--data", conllu))
    assert runs.load(tmp_path)[0].matmul_dtype == "bfloat16"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--time-budget", "-5"], ["--time-budget", "positive"]),
        (["--time-budget", "0"], ["--time-budget", "positive"]),
        (["--hidden", "0"], ["--hidden: expected a positive integer, got 0"]),
        (["--batch-size", "-2"], ["--batch-size", "positive"]),
        (["--epochs", "0"], ["--epochs", "positive"]),
        (["--dropout", "1.5"], ["--dropout"]),
        (["--cell", "lstmm"], ["--cell: expected one of rnn, lstm, gru"]),
        (["--matmul-dtype", "float16"], ["--matmul-dtype: expected one of float32, bfloat16"]),
        (["--bidirectional"], ["cannot be bidirectional"]),
        (["--word-dropout", "0.1"], ["--word-dropout", "not for lm"]),
    ],
)
def test_bad_options(files, tmp_path, args, fragments):
    result = invoke("train", "lm", "--text", files["text"], "--out", tmp_path, *args)
    assert_one_line_error(result, *fragments)


def test_bad_files(files, tmp_path):
    missing = tmp_path / "missing.txt"
    assert_one_line_error(invoke("train", "lm", "--text", missing), "file not found", "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(invoke("train", "lm", "--text", empty), "empty")
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("pos\tfine\nneg\tok\nno tab here\n", encoding="utf-8")
    result = invoke("train", "classify", "--train", bad_tsv, "--valid", files["tsv"])
    assert_one_line_error(result, "bad.tsv:3:", "label<TAB>text")
    bad_conllu = tmp_path / "bad.conllu"
    bad_conllu.write_text("1\tThe\tthe\tDET\n", encoding="utf-8")
    result = invoke("train", "tag", "--train", files["conllu"], "--valid", bad_conllu)
    assert_one_line_error(result, "bad.conllu:1:", "10 tab-separated columns")
    assert_one_line_error(invoke("sample", "--ckpt", tmp_path), "no checkpoint found")
    assert_one_line_error(invoke("sample", "--ckpt", tmp_path, "--length", "0"), "--length")


def test_incompatible_checkpoint(lm_run, files):
    result = invoke(
        "train",
        "lm",
        "--text",
        files["text"],
        "--out",
        lm_run,
        "--resume",
        *TINY[:2],
        "--embed",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
    )
    assert_one_line_error(result, "incompatible", "embed=8 (checkpoint) vs 4")


def test_non_numbers_are_usage_errors():
    result = invoke("train", "lm", "--time-budget", "abc")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--time-budget" in result.stderr


def test_tagger_reads_characters_by_default():
    vocabs = tag.build_vocabs([(["A", "café"], ["DET", "NOUN"])])
    model = tag.build_model(tag.DEFAULTS, vocabs)
    assert model.char_vocab_size == len(vocabs["chars"]) > 2 and model.bidirectional
