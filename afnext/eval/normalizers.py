"""Text normalisers that benchmarks apply before scoring.

LibriSpeech WER is reported after Whisper's English text normaliser (lowercasing, punctuation removal,
spelling standardisation such as "colour" -> "color", contraction and number normalisation). We do not
reimplement it: small differences in such a normaliser move WER by tenths of a point, which is the size
of the effects we compare. We use the PyPI package `whisper-normalizer` (MIT), a packaged copy of
`whisper/normalizers/english.py` including its British->American spelling table.

The import is lazy so that the rest of `afnext.eval` works without the package; asking for the
normaliser without it installed raises an ImportError that names the package to install.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

INSTALL_HINT = "pip install whisper-normalizer"


@lru_cache(maxsize=1)
def english_normalizer() -> Callable[[str], str]:
    """Whisper's `EnglishTextNormalizer` as a str -> str function (built once; it loads a spelling table)."""
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as e:
        raise ImportError(
            "LibriSpeech scoring needs Whisper's English text normaliser from the `whisper-normalizer` "
            f"package: {INSTALL_HINT}") from e
    return EnglishTextNormalizer()


def english_words(text: str) -> list[str]:
    """Words of `text` after Whisper's English normaliser (the tokenisation WER is computed on)."""
    return english_normalizer()(text or "").split()
