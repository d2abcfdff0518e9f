"""Text vectorizers: content input only, no callables, a vocabulary that indexes exactly its columns."""

from __future__ import annotations

import codecs
from typing import Any

import numpy as np

from runtime._internal.validators.common import (
    array,
    fail,
    has,
    integer,
    one_of,
    state,
)

# The estimators this family validates (the allowlist is derived from these declarations).
TYPES = (
    "sklearn.feature_extraction.text.CountVectorizer",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.feature_extraction.text.HashingVectorizer",
)

MAX_VOCABULARY = 50_000_000
# The token patterns accepted: the model's pattern runs on every request in the serving process,
# and a backtracking one (".*" * 100 + "Q") never returns. These run in linear time.
TOKEN_PATTERNS = frozenset({r"(?u)\b\w\w+\b", r"(?u)\b\w+\b", r"\b\w\w+\b", r"\b\w+\b", r"\S+", r"(?u)\S+"})
MAX_NGRAM = 20


def _check_text_params(est: Any) -> None:
    one_of(est, "input", ("content",))
    one_of(est, "analyzer", ("word", "char", "char_wb"))
    one_of(est, "decode_error", ("strict", "ignore", "replace"))
    one_of(est, "strip_accents", (None, "ascii", "unicode"))
    for name in ("preprocessor", "tokenizer"):
        if state(est, name) is not None:
            raise fail(est, f"{name} is a callable; only the built-in text processing is accepted")
    encoding = state(est, "encoding")
    try:
        if not isinstance(encoding, str) or not codecs.lookup(encoding)._is_text_encoding:
            raise LookupError(encoding)
    except LookupError:
        raise fail(est, f"encoding {encoding!r} is not a text encoding") from None
    pattern = state(est, "token_pattern")
    if pattern is not None and (not isinstance(pattern, str) or pattern not in TOKEN_PATTERNS):
        raise fail(
            est,
            f"token_pattern {pattern!r} is not one of {sorted(TOKEN_PATTERNS)}: the pattern runs on every "
            "request in this process, and a backtracking one never returns",
        )
    ngram = state(est, "ngram_range", (0, 0))
    low, high = ngram if isinstance(ngram, tuple) and len(ngram) == 2 else (0, 0)
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= MAX_NGRAM):
        raise fail(est, f"ngram_range {ngram!r} is outside [1, {MAX_NGRAM}]")
    stop = state(est, "stop_words")
    if not (stop is None or stop == "english" or (isinstance(stop, (list, tuple, frozenset, set)) and all(isinstance(w, str) for w in stop))):
        raise fail(est, "stop_words must be None, 'english' or a list of words")
    dtype = state(est, "dtype", np.float64)
    if not (isinstance(dtype, type) and issubclass(dtype, (np.number, float, int))):
        raise fail(est, f"dtype {dtype!r} is not a numeric type")


def validate(est: Any) -> None:
    name = type(est).__name__
    if name == "TfidfTransformer":
        if has(est, "idf_"):
            array(est, "idf_", ndim=1, kinds="f")
        one_of(est, "norm", (None, "l1", "l2"))
        return
    _check_text_params(est)
    one_of(est, "norm", (None, "l1", "l2")) if has(est, "norm") else None
    if name == "HashingVectorizer":
        integer(est, "n_features", 1, (1 << 31) - 1)
        return
    vocabulary = state(est, "vocabulary_")
    if not isinstance(vocabulary, dict) or len(vocabulary) > MAX_VOCABULARY:
        raise fail(est, "vocabulary_ is not a bounded dict")
    if not all(isinstance(k, str) for k in vocabulary):
        raise fail(est, "vocabulary_ has keys that are not strings")
    columns = np.fromiter((int(v) if isinstance(v, (int, np.integer)) else -1 for v in vocabulary.values()), dtype=np.int64, count=len(vocabulary))
    if not np.array_equal(np.sort(columns), np.arange(len(vocabulary))):
        raise fail(est, "vocabulary_ does not map its terms onto columns 0..n-1 exactly once")
    if name == "TfidfVectorizer":
        tfidf: Any = state(est, "_tfidf")
        if type(tfidf).__name__ != "TfidfTransformer":
            raise fail(est, "_tfidf is not a TfidfTransformer")
        if has(tfidf, "idf_") and array(tfidf, "idf_", ndim=1, kinds="f").shape != (len(vocabulary),):
            raise fail(est, "idf_ disagrees with the vocabulary")
