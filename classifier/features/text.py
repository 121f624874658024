"""Text to n-grams, exactly as scikit-learn's TfidfVectorizer analyzers do it, with the stdlib.

Training fits scikit-learn's vectorizers with these same settings; serving calls the
functions here, so the vocabulary learned at train time is looked up with the very
strings scikit-learn produced (tests/test_lexical_features.py checks equality).
"""

import re
import unicodedata
from collections.abc import Callable

# scikit-learn's defaults: a token is 2+ word characters; runs of whitespace become one.
TOKEN_PATTERN = re.compile(r"(?u)\b\w\w+\b")
WHITE_SPACES = re.compile(r"\s\s+")
STRIP_ACCENTS: tuple[str | None, ...] = (None, "unicode")


def strip_accents_unicode(text: str) -> str:
    """Drop combining marks after NFKD (scikit-learn's `strip_accents="unicode"`)."""
    if text.isascii():
        return text
    normalized = unicodedata.normalize("NFKD", text)
    return "".join([char for char in normalized if not unicodedata.combining(char)])


def preprocessor(lowercase: bool, strip_accents: str | None) -> Callable[[str], str]:
    """Lowercase first, then strip accents: scikit-learn's order."""
    if strip_accents not in STRIP_ACCENTS:
        raise ValueError(f"strip_accents: {strip_accents!r} is not one of {list(STRIP_ACCENTS)}")

    def preprocess(text: str) -> str:
        if lowercase:
            text = text.lower()
        if strip_accents == "unicode":
            text = strip_accents_unicode(text)
        return text

    return preprocess


def word_ngrams(text: str, low: int, high: int) -> list[str]:
    """Word n-grams (low..high) of an already preprocessed text, space-joined."""
    tokens = TOKEN_PATTERN.findall(text)
    if high == 1:
        return tokens if low == 1 else []
    grams = list(tokens) if low == 1 else []
    start = max(low, 2)
    count = len(tokens)
    join = " ".join
    for size in range(start, min(high + 1, count + 1)):
        grams.extend(join(tokens[index : index + size]) for index in range(count - size + 1))
    return grams


def char_wb_ngrams(text: str, low: int, high: int) -> list[str]:
    """Character n-grams inside word boundaries, each word padded with one space each side."""
    text = WHITE_SPACES.sub(" ", text)
    grams: list[str] = []
    append = grams.append
    for word in text.split():
        padded = " " + word + " "
        length = len(padded)
        for size in range(low, high + 1):
            if length <= size:
                # A short word counts once, whole, as scikit-learn does.
                append(padded)
                break
            grams.extend([padded[offset : offset + size] for offset in range(length - size + 1)])
    return grams
