"""Data layer: vocabularies, file readers and batching (pure Python + NumPy)."""

from jrnn.data.batching import (
    batches,
    bucket_length,
    bucket_lengths,
    lm_random_windows,
    lm_stream_batches,
    pad_batch,
    split,
)
from jrnn.data.readers import (
    FileFormatError,
    load_rt_polarity,
    read_conllu,
    read_json,
    read_text,
    read_tsv,
)
from jrnn.data.vocab import (
    Vocab,
    tokenize_words,
)

__all__ = [
    "FileFormatError",
    "Vocab",
    "batches",
    "bucket_length",
    "bucket_lengths",
    "lm_random_windows",
    "lm_stream_batches",
    "load_rt_polarity",
    "pad_batch",
    "read_conllu",
    "read_json",
    "read_text",
    "read_tsv",
    "split",
    "tokenize_words",
]
