"""Real speech for the synthetic corpus: espeak-ng driven through ctypes.

espeak-ng is a formant synthesiser: robotic next to neural TTS, but it is real, intelligible speech in
dozens of languages, it is small, fast (hundreds of seconds of audio per second of CPU), has no model
weights to fetch, and its output is a deterministic function of its input. The ``espeakng-loader``
wheel ships ``libespeak-ng.so`` and ``espeak-ng-data``, so nothing is installed system-wide and no
subprocess is started; we call the C API (``speak_lib.h``) directly.

How a call runs (``speak``):

1. Under one process-wide lock (the library is a bundle of global state and is not thread-safe), load
   the library *afresh*, ``espeak_Initialize`` it in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode with the
   wheel's data path, select the voice, set rate and pitch, and ``espeak_Synth`` the text; a synth
   callback collects the 22,050 Hz int16 chunks. Then ``espeak_Terminate`` and ``dlclose``.
   Why reload every time: the synthesiser keeps function-level ``static`` state that neither
   ``espeak_Terminate`` nor ``espeak_ng_SetRandSeed`` resets (the pitch-flutter table index, the
   glottal cycle counter of the "roughness" modulation, the AGC level), so the same text synthesised
   twice in one process differs by a few samples of timing and every sample of waveform; and
   initialisation seeds the breath-noise generator from the clock, so we re-seed it. Unloading
   the shared object and mapping it again restores every static to its initial value, which makes a
   call a pure function of (text, voice, rate, pitch): bit-identical across calls, processes and
   machines with the same wheel. The reload costs about 3 ms per call, mostly re-reading the
   language dictionary, against ~0.7 ms of synthesis per second of speech: end to end, about 280 s
   of speech per CPU-second for 2-s utterances (7 ms each).
2. Convert to float32, resample 22,050 -> 16,000 Hz with soxr, trim leading and trailing silence to
   ``MARGIN_S``, and peak-normalise to ``PEAK_DBFS``. The peak level is chosen so that the active
   (speech-frame) RMS of typical utterances lands near -20 dBFS, the reference level that
   ``afnext.data.sounds`` normalises its events and music to, so speech and sounds mixed at equal
   gain are about equally loud.

Voices. An espeak voice is a language plus an optional *variant* (``voices/!v/m3``, ``f2``, ...),
files that change pitch range, formant scaling, breathiness and echo; ``en-us+f2`` and ``en-us+m3``
sound like different people. ``VOICES`` is a curated grid of the languages below times ten variants
(five male, five female); the gender comes from the variant file's ``gender`` line, and the test
suite checks it against the shipped files. Variants m5, m7, m8 (strongly processed timbres) and the
named novelty voices are left out.

Numbers. ``number_words(n, language)`` spells 0..100 the way espeak reads the digits aloud (for
example German 100 is "einhundert", because that is what espeak says for "100"), so a clip spoken
from digits has an exact written target in every language. The tests compare espeak's phonemes for
the digits and for the words.
"""

from __future__ import annotations

import _ctypes
import ctypes
import functools
import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import soxr

from afnext.audio import SAMPLE_RATE

# ----------------------------------------------------------------------------- constants

PEAK_DBFS = -4.0  # dB re full scale; speech peak after normalisation (active RMS then sits near -20 dBFS)
MARGIN_S = 0.05  # seconds of silence kept before the first and after the last speech frame
TRIM_FRAME_S = 0.005  # seconds per frame of the silence detector
TRIM_FLOOR_DB = -45.0  # dB re the loudest frame; quieter frames at either end count as silence
MIN_RATE_WPM, MAX_RATE_WPM = 80, 450  # espeak's own limits (above 450 it switches to a time-stretcher)
DEFAULT_RATE_WPM = 160  # words per minute
DEFAULT_PITCH = 50  # espeak pitch, 0..99; 50 is the voice's own base pitch
MAX_TEXT_CHARS = 10_000  # characters; longer text belongs in several clips

# The espeak voice used for each language code we expose. "en" is American English ("en" alone in
# espeak-ng is British RP); "fr" is France French, "es" Castilian Spanish, "it" and "de" standard.
LANGUAGE_VOICE = {"en": "en-us", "de": "de", "fr": "fr", "es": "es", "it": "it"}
LANGUAGES = tuple(LANGUAGE_VOICE)

# Variant file -> gender (the variant files' own "gender" lines; checked by the tests).
VARIANT_GENDER = {
    "m1": "male", "m2": "male", "m3": "male", "m4": "male", "m6": "male",
    "f1": "female", "f2": "female", "f3": "female", "f4": "female", "f5": "female",
}

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of calling exit() when data is missing
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EE_OK, _EE_NOT_FOUND = 0, 2
_BUFFER_MS = 1000  # callback granularity: fewer, larger chunks
_RAND_SEED = 0x5EED  # espeak's noise generator seed (any constant)
_IPA = 0x02  # espeak_TextToPhonemes phonememode bit: IPA output


# ----------------------------------------------------------------------------- voices


@dataclass(frozen=True)
class Voice:
    """A speaker: a language code from ``LANGUAGES`` and an espeak variant ("m3", "f2", ...).

    ``variant=None`` is the language's default voice (male). ``name`` is the string espeak selects the
    voice by, e.g. "en-us+f3"; ``id`` is a short stable speaker id for labels, e.g. "en-f3".
    """

    language: str
    variant: str | None
    gender: str

    @property
    def name(self) -> str:
        base = LANGUAGE_VOICE.get(self.language, self.language)
        return base if self.variant is None else f"{base}+{self.variant}"

    @property
    def id(self) -> str:
        return f"{self.language}-{self.variant or 'default'}"


VOICES: list[Voice] = [Voice(lang, v, g) for lang in LANGUAGES for v, g in VARIANT_GENDER.items()]


def voices(language: str | None = None, gender: str | None = None) -> list[Voice]:
    """The curated voices, optionally restricted to one language and/or gender."""
    return [v for v in VOICES if (language is None or v.language == language) and (gender is None or v.gender == gender)]


def _check_voice(voice: Voice) -> None:
    if not isinstance(voice, Voice):
        raise TypeError(f"voice must be a Voice, got {type(voice).__name__}")
    if voice.language not in LANGUAGE_VOICE:
        raise ValueError(f"unknown language {voice.language!r}; supported: {', '.join(LANGUAGES)}")
    if voice.variant is not None and voice.variant not in _variant_files():
        # espeak silently ignores an unknown "+variant", so catch it here.
        raise ValueError(f"unknown espeak variant {voice.variant!r} (no file voices/!v/{voice.variant})")
    if voice.gender not in ("male", "female"):
        raise ValueError(f"gender must be 'male' or 'female', got {voice.gender!r}")


# ----------------------------------------------------------------------------- the library


@functools.cache
def _paths() -> tuple[str, str]:
    """(library path, data path) from the espeakng-loader wheel."""
    try:
        import espeakng_loader
    except ImportError as e:
        raise RuntimeError("espeak-ng is unavailable: install the 'espeakng-loader' package") from e
    lib, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    if not os.path.exists(lib):
        raise RuntimeError(f"espeak-ng library not found at {lib}")
    return lib, data


@functools.cache
def _variant_files() -> frozenset[str]:
    return frozenset(os.listdir(os.path.join(_paths()[1], "voices", "!v")))


def variant_gender(variant: str) -> str | None:
    """The gender declared in an espeak variant file ("male"/"female"), or None if it declares none."""
    with open(os.path.join(_paths()[1], "voices", "!v", variant), encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "gender":
                return parts[1]
    return None


_LOCK = threading.Lock()  # espeak-ng is one global state machine


def _fresh_lock_after_fork() -> None:
    # A child forked while another thread was synthesising would otherwise inherit the lock held forever.
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_after_fork)
_dlclose = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary")  # POSIX / Windows
_RTLD_LOCAL, _RTLD_NOW = getattr(os, "RTLD_LOCAL", 0), getattr(os, "RTLD_NOW", 0)
_RTLD_NOLOAD, _RTLD_LAZY = getattr(os, "RTLD_NOLOAD", 0), getattr(os, "RTLD_LAZY", 0)
_chunks: list[bytes] = []  # filled by the synth callback while _LOCK is held
_warned_shared = False
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)


def _on_samples(wav, numsamples, events):  # t_espeak_callback(short *wav, int numsamples, espeak_EVENT *events)
    if wav and numsamples > 0:
        _chunks.append(ctypes.string_at(wav, 2 * numsamples))
    return 0  # 0 = continue synthesis


_CALLBACK = _CALLBACK_TYPE(_on_samples)  # module-level so the C side never sees a collected object


class _Session:
    """One freshly loaded, initialised espeak-ng instance; unloaded again on exit (see module docstring)."""

    def __enter__(self):
        self.lock = _LOCK
        self.lock.acquire()
        try:
            lib_path, data_path = _paths()
            try:
                self.lib = lib = ctypes.CDLL(lib_path, mode=_RTLD_LOCAL | _RTLD_NOW)
            except OSError as e:
                raise RuntimeError(f"cannot load espeak-ng from {lib_path}: {e}") from e
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                         ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
            lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path.encode(),
                                              _INITIALIZE_DONT_EXIT)
            if self.sample_rate <= 0:
                self._unload()
                raise RuntimeError(f"espeak_Initialize failed (data path {data_path})")
            lib.espeak_SetSynthCallback(_CALLBACK)
            return self
        except BaseException:
            self.lock.release()
            raise

    def __exit__(self, *exc):
        try:
            self.lib.espeak_Terminate()
            self._unload()
        finally:
            _chunks.clear()
            self.lock.release()

    def _unload(self):
        global _warned_shared
        _dlclose(self.lib._handle)
        if not _RTLD_NOLOAD:
            return
        try:  # RTLD_NOLOAD succeeds only if something else in the process still holds the library
            other = ctypes.CDLL(_paths()[0], mode=_RTLD_NOLOAD | _RTLD_LAZY)
        except OSError:
            return
        _dlclose(other._handle)
        if not _warned_shared:
            _warned_shared = True
            warnings.warn("libespeak-ng is also loaded by another component of this process, so its state "
                          "persists between calls and speech is not bit-reproducible", RuntimeWarning, stacklevel=3)

    def set_voice(self, voice: Voice) -> None:
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice.name!r}")

    def synth(self, text: str, rate_wpm: int, pitch: int) -> np.ndarray:
        self.lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
        self.lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
        # Breathy variants (f2, f3, f5, ...) add noise from espeak's own generator, which
        # initialisation seeds from the clock: fix the seed.
        self.lib.espeak_ng_SetRandSeed(_RAND_SEED)
        data = text.encode("utf-8") + b"\0"
        _chunks.clear()
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed with error {err}")
        return np.frombuffer(b"".join(_chunks), dtype=np.int16)

    def phonemes(self, text: str) -> str:
        buf = ctypes.c_char_p(text.encode("utf-8"))
        ptr = ctypes.pointer(buf)
        out = []
        while ptr.contents.value:  # one clause per call; the library advances the pointer
            res = self.lib.espeak_TextToPhonemes(ptr, _CHARS_UTF8, _IPA)
            if res is None:
                break
            out.append(res.decode("utf-8"))
        return " ".join(s for s in out if s)


# ----------------------------------------------------------------------------- public API


def speak(text: str, voice: Voice, *, rate_wpm: int = DEFAULT_RATE_WPM, pitch: int = DEFAULT_PITCH) -> np.ndarray:
    """Synthesise ``text`` with ``voice``: float32 mono at 16 kHz, silence trimmed, peak at ``PEAK_DBFS``.

    ``rate_wpm`` is espeak's speaking rate (80..450 words per minute); ``pitch`` shifts the voice's
    base pitch (0..99, 50 = unchanged). The result depends only on the arguments (bit-identical on
    every call). Raises ValueError for empty text, unknown voices or out-of-range settings and
    RuntimeError if the library cannot be loaded.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if "\x00" in text:
        raise ValueError("text contains a NUL character")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text has {len(text)} characters; at most {MAX_TEXT_CHARS} per clip")
    _check_voice(voice)
    if not MIN_RATE_WPM <= int(rate_wpm) <= MAX_RATE_WPM:
        raise ValueError(f"rate_wpm must be in [{MIN_RATE_WPM}, {MAX_RATE_WPM}], got {rate_wpm}")
    if not 0 <= int(pitch) <= 99:
        raise ValueError(f"pitch must be in [0, 99], got {pitch}")
    with _Session() as s:
        s.set_voice(voice)
        pcm = s.synth(text, int(rate_wpm), int(pitch))
        native_rate = s.sample_rate
    if pcm.size == 0 or not pcm.any():
        raise ValueError(f"espeak-ng produced no audio for {text!r}")
    x = soxr.resample(pcm.astype(np.float32) / 32768.0, native_rate, SAMPLE_RATE, quality="HQ")
    x = _trim(np.asarray(x, dtype=np.float32))
    return (x * (10 ** (PEAK_DBFS / 20) / np.abs(x).max())).astype(np.float32)


def phonemes(text: str | list[str], language: str) -> str | list[str]:
    """espeak-ng's IPA transcription (stress marks included) of ``text`` in ``language``.

    A list of texts is transcribed in one library session and returns a list.
    """
    if language not in LANGUAGE_VOICE:
        raise ValueError(f"unknown language {language!r}; supported: {', '.join(LANGUAGES)}")
    texts = [text] if isinstance(text, str) else list(text)
    with _Session() as s:
        s.set_voice(Voice(language, None, "male"))
        out = [s.phonemes(t) for t in texts]
    return out[0] if isinstance(text, str) else out


def _trim(x: np.ndarray) -> np.ndarray:
    """Cut leading/trailing frames more than ``TRIM_FLOOR_DB`` below the loudest, keeping ``MARGIN_S``."""
    hop = round(TRIM_FRAME_S * SAMPLE_RATE)
    n_frames = len(x) // hop
    if n_frames == 0:
        return x
    energy = np.square(x[: n_frames * hop].reshape(n_frames, hop), dtype=np.float64).mean(axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (TRIM_FLOOR_DB / 10))
    margin = round(MARGIN_S * SAMPLE_RATE)
    start = max(0, loud[0] * hop - margin)
    end = min(len(x), (loud[-1] + 1) * hop + margin)
    return x[start:end]


# ----------------------------------------------------------------------------- numbers

_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen").split()
_EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_DE_ONES = ("null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn fünfzehn "
            "sechzehn siebzehn achtzehn neunzehn").split()
_DE_TENS = ("", "", "zwanzig", "dreißig", "vierzig", "fünfzig", "sechzig", "siebzig", "achtzig", "neunzig")
_FR_ONES = ("zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize "
            "dix-sept dix-huit dix-neuf").split()
_FR_TENS = ("", "", "vingt", "trente", "quarante", "cinquante", "soixante")
_ES_ONES = ("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciséis "
            "diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés veinticuatro veinticinco "
            "veintiséis veintisiete veintiocho veintinueve").split()
_ES_TENS = ("", "", "", "treinta", "cuarenta", "cincuenta", "sesenta", "setenta", "ochenta", "noventa")
_IT_ONES = ("zero uno due tre quattro cinque sei sette otto nove dieci undici dodici tredici quattordici quindici "
            "sedici diciassette diciotto diciannove").split()
_IT_TENS = ("", "", "venti", "trenta", "quaranta", "cinquanta", "sessanta", "settanta", "ottanta", "novanta")


def number_words(n: int, language: str) -> str:
    """``n`` (0..100) spelled out as espeak-ng reads the digits in ``language`` (standard orthography).

    French uses the traditional spelling (hyphens, "et un"); German 100 is "einhundert" and English
    100 "one hundred", matching what espeak says for "100".
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= 100:
        raise ValueError(f"n must be an integer in [0, 100], got {n!r}")
    n = int(n)
    tens, ones = divmod(n, 10)
    if language == "en":
        if n == 100:
            return "one hundred"
        return _EN_ONES[n] if n < 20 else _EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else "")
    if language == "de":
        if n == 100:
            return "einhundert"
        if n < 20:
            return _DE_ONES[n]
        return (("ein" if ones == 1 else _DE_ONES[ones]) + "und" if ones else "") + _DE_TENS[tens]
    if language == "fr":
        if n == 100:
            return "cent"
        if n < 20:
            return _FR_ONES[n]
        if n < 70:
            return _FR_TENS[tens] + ("" if ones == 0 else " et un" if ones == 1 else f"-{_FR_ONES[ones]}")
        if n < 80:  # 70..79 = soixante + 10..19
            return "soixante et onze" if n == 71 else f"soixante-{_FR_ONES[n - 60]}"
        return "quatre-vingts" if n == 80 else f"quatre-vingt-{_FR_ONES[n - 80]}"
    if language == "es":
        if n == 100:
            return "cien"
        return _ES_ONES[n] if n < 30 else _ES_TENS[tens] + (f" y {_ES_ONES[ones]}" if ones else "")
    if language == "it":
        if n == 100:
            return "cento"
        if n < 20:
            return _IT_ONES[n]
        stem = _IT_TENS[tens]
        if ones == 0:
            return stem
        if ones in (1, 8):  # the tens' final vowel elides before a vowel: ventuno, trentotto
            stem = stem[:-1]
        return stem + ("tré" if ones == 3 else _IT_ONES[ones])
    raise ValueError(f"unknown language {language!r}; supported: {', '.join(LANGUAGES)}")
