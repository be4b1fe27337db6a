"""Programmatic sounds, music and scenes with exact labels, for the synthetic audio-skills corpus.

Everything here is a closed-form or block-vectorised numpy computation on float32 mono at
``SAMPLE_RATE`` (16 kHz), so labels are true by construction: a sound asked for at ``onset_s`` starts
at sample ``round(onset_s * 16000)`` and the label reports exactly that sample as seconds; a note
labelled A4 has its fundamental at 440 Hz; a rhythm at 120 BPM has beats 0.5 s apart. All randomness
comes from a caller-supplied ``numpy.random.Generator``, so a seed reproduces a corpus bit for bit.

Layers:

* **Primitives** (``tone``, ``chirp``, ``noise_burst``, ``click_train``, ``am_texture``,
  ``fm_texture``): one signal each, ``round(dur_s * 16000)`` samples long, scaled to a given ``peak``
  amplitude, with a ``FADE_S`` raised-cosine ramp at both ends: short enough that onsets are sharp
  (full level 5 ms after the labelled onset), long enough to avoid an audible click.
* **Event classes** (``EVENT_CLASSES``): eight acoustically distinct named sounds (steady pure tone,
  frequency sweep, harmonic buzz, impulse train, band-noise sweep, low thuds, inharmonic decaying
  partials, pulsed high tone), each drawing its own parameters from ``rng``.
* **Music**: ``note`` in six timbres (additive sine / square / sawtooth / organ / bell, and
  Karplus-Strong ``pluck`` tuned with a fractional-delay loop filter so its pitch is exact),
  ``chord``, ``rhythm`` (beat and hit onsets), ``melody_in_key`` (note names and onsets).
* **Scenes**: ``Scene`` mixes sounds onto a timeline, keeps the event list, and ``render`` adds
  background noise at an exact SNR.

Levels. Primitives take an explicit ``peak``. Finished sounds (event classes, notes, chords, rhythms,
melodies) are normalised to ``REFERENCE_DBFS`` of *active RMS*: the RMS over the 20-ms frames within
``ACTIVE_FLOOR_DB`` of the loudest frame. That is a cheap loudness proxy that ignores silent gaps, so a
sparse click train and a steady tone at the same gain sound about equally loud; ``afnext.data.tts``
peak-normalises speech to a level whose active RMS lands near the same -20 dBFS. ``Scene.add``'s
``gain_db`` is relative to that reference.

SNR. ``Scene.render(noise_color, snr_db)`` scales the noise so that
``10 log10(P_signal / P_noise) == snr_db`` exactly (to float rounding), where both powers are mean
squares over the same samples: the union of all events' [onset, offset) spans. Silent gaps between
events therefore do not dilute the signal power, and a scene's SNR means "how far the sounds stand
above the background while they play". ``mix_at_snr`` is the whole-array version of the same rule.

Noise colours: white (flat), pink (power ~ 1/f) and brown (power ~ 1/f^2), both shaped in the
frequency domain above ``NOISE_LOW_HZ`` (below it the slope is held flat, so brown noise does not
become an unbounded rumble). Long noise is made in ``NOISE_BLOCK`` segments joined by equal-power
cross-fades, so a 30-minute background costs O(block) memory beyond the output and stays Gaussian with
constant variance.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import av
import numpy as np

from afnext.audio import SAMPLE_RATE

# ----------------------------------------------------------------------------- constants

NYQUIST_HZ = SAMPLE_RATE / 2
FADE_S = 0.005  # seconds of raised-cosine ramp at each end of a primitive
DEFAULT_PEAK = 0.5  # linear amplitude of primitives (-6 dBFS)
REFERENCE_DBFS = -20.0  # active-RMS level of finished sounds, dB re full scale
ACTIVE_FRAME_S = 0.02  # seconds per frame of the active-RMS meter
ACTIVE_FLOOR_DB = -30.0  # frames this far below the loudest frame do not count as active
MAX_PEAK = 0.99  # finished sounds are scaled down if normalisation would push them past this
HARMONIC_LIMIT_HZ = 0.45 * SAMPLE_RATE  # additive synthesis stops here (7.2 kHz), well below Nyquist
NOISE_LOW_HZ = 20.0  # pink/brown spectral slopes are flat below this frequency
NOISE_BLOCK = 1 << 17  # samples per noise synthesis segment (8.2 s)
NOISE_XFADE = 1 << 11  # samples of equal-power cross-fade between segments (128 ms)
POWER_CHUNK = 1 << 20  # samples per float64 chunk when summing power over long arrays
MIDI_A4, A4_HZ = 69, 440.0


def n_samples(dur_s: float) -> int:
    """Samples in ``dur_s`` seconds (rounded to the nearest sample); must be at least one."""
    if not math.isfinite(dur_s) or dur_s <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {dur_s!r}")
    n = round(dur_s * SAMPLE_RATE)
    if n < 1:
        raise ValueError(f"duration {dur_s} s is shorter than one sample")
    return n


def _time(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / SAMPLE_RATE


def _check_freq(f: float, what: str = "frequency") -> None:
    if not math.isfinite(f) or not 0 < f < NYQUIST_HZ:
        raise ValueError(f"{what} must be in (0, {NYQUIST_HZ:g}) Hz, got {f!r}")


def _rng(rng) -> np.random.Generator:
    if rng is None:
        raise ValueError("this sound is random: pass a numpy Generator (np.random.default_rng(seed))")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    return rng


# ----------------------------------------------------------------------------- levels


def rms_db(x: np.ndarray) -> float:
    """RMS level in dB re full scale (a full-scale sine is -3.01 dB); -inf for silence."""
    x = np.asarray(x)
    if x.size == 0:
        return float("-inf")
    ms = _sum_squares(x, [(0, x.size)]) / x.size
    return 10 * math.log10(ms) if ms > 0 else float("-inf")


def active_rms_db(x: np.ndarray) -> float:
    """RMS in dBFS over the 20-ms frames within ``ACTIVE_FLOOR_DB`` of the loudest frame (see module doc)."""
    x = np.asarray(x, dtype=np.float32)
    hop = round(ACTIVE_FRAME_S * SAMPLE_RATE)
    if x.size < hop:
        return rms_db(x)
    nf = x.size // hop
    energy = np.square(x[: nf * hop].reshape(nf, hop), dtype=np.float64).mean(axis=1)
    top = energy.max()
    if top <= 0:
        return float("-inf")
    return 10 * math.log10(energy[energy >= top * 10 ** (ACTIVE_FLOOR_DB / 10)].mean())


def normalize(x: np.ndarray, level_dbfs: float = REFERENCE_DBFS) -> np.ndarray:
    """Scale ``x`` to ``level_dbfs`` of active RMS, then down if needed so |x| <= ``MAX_PEAK``."""
    level = active_rms_db(x)
    if not math.isfinite(level):
        return np.asarray(x, dtype=np.float32)
    y = np.asarray(x, dtype=np.float32) * np.float32(10 ** ((level_dbfs - level) / 20))
    peak = float(np.abs(y).max())
    return y * np.float32(MAX_PEAK / peak) if peak > MAX_PEAK else y


def _sum_squares(x: np.ndarray, spans) -> float:
    """Sum of squares over [a, b) spans, accumulated in float64 chunk by chunk (bounded memory)."""
    total = 0.0
    for a, b in spans:
        for s in range(a, b, POWER_CHUNK):
            c = x[s: min(b, s + POWER_CHUNK)].astype(np.float64)
            # einsum, not np.dot: a threaded BLAS dot on a 2-core machine costs ~16 ms of thread wake-up
            total += float(np.einsum("i,i->", c, c))
    return total


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal + g * noise`` with g chosen so that 10 log10(P_signal / P(g * noise)) == ``snr_db``.

    Powers are mean squares over the whole (equal-length) arrays.
    """
    signal, noise = np.asarray(signal, dtype=np.float32), np.asarray(noise, dtype=np.float32)
    if signal.shape != noise.shape or signal.ndim != 1:
        raise ValueError(f"signal and noise must be 1-D and the same length, got {signal.shape} and {noise.shape}")
    g = _noise_gain(_sum_squares(signal, [(0, signal.size)]), _sum_squares(noise, [(0, noise.size)]), snr_db)
    return signal + np.float32(g) * noise


def _noise_gain(signal_energy: float, noise_energy: float, snr_db: float) -> float:
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db!r}")
    if signal_energy <= 0:
        raise ValueError("the signal is silent, so an SNR is undefined")
    if noise_energy <= 0:
        raise ValueError("the noise is silent")
    return math.sqrt(signal_energy / noise_energy * 10 ** (-snr_db / 10))


# ----------------------------------------------------------------------------- primitives


def _fade(x: np.ndarray, fade_s: float = FADE_S) -> np.ndarray:
    """Apply a raised-cosine ramp of ``fade_s`` (at most half the length) to both ends, in place."""
    m = min(round(fade_s * SAMPLE_RATE), x.size // 2)
    if m > 0:
        ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)).astype(x.dtype)
        x[:m] *= ramp
        x[x.size - m:] *= ramp[::-1]
    return x


def _finish(x: np.ndarray, peak: float, fade_s: float = FADE_S) -> np.ndarray:
    """Scale to ``peak`` amplitude, fade both ends, return float32."""
    if not 0 < peak <= 1:
        raise ValueError(f"peak must be in (0, 1], got {peak!r}")
    x = np.asarray(x, dtype=np.float32)
    top = float(np.abs(x).max()) if x.size else 0.0
    if top > 0:
        x = x * np.float32(peak / top)
    return _fade(x, fade_s)


def tone(freq_hz: float, dur_s: float, *, peak: float = DEFAULT_PEAK) -> np.ndarray:
    """A pure sine at ``freq_hz`` (starting at phase 0)."""
    _check_freq(freq_hz)
    return _finish(np.sin(2 * np.pi * freq_hz * _time(n_samples(dur_s))), peak)


def chirp(f0: float, f1: float, dur_s: float, *, kind: str = "exponential", peak: float = DEFAULT_PEAK) -> np.ndarray:
    """A sine sweeping from ``f0`` to ``f1`` Hz over the duration; ``kind`` "exponential" or "linear"."""
    _check_freq(f0, "f0")
    _check_freq(f1, "f1")
    n = n_samples(dur_s)
    t, T = _time(n), n / SAMPLE_RATE
    if kind == "linear":
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * T))
    elif kind == "exponential":
        k = math.log(f1 / f0)
        # integral of f0 * (f1/f0)^(t/T); the limit k -> 0 is a constant tone
        phase = 2 * np.pi * f0 * t if abs(k) < 1e-12 else 2 * np.pi * f0 * T / k * np.expm1(k * t / T)
    else:
        raise ValueError(f"kind must be 'exponential' or 'linear', got {kind!r}")
    return _finish(np.sin(phase), peak)


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of unit-variance Gaussian noise: "white", "pink" (1/f) or "brown" (1/f^2), float32."""
    rng = _rng(rng)
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if color == "white":
        return rng.standard_normal(n, dtype=np.float32)
    slope = {"pink": 1.0, "brown": 2.0}.get(color)
    if slope is None:
        raise ValueError(f"noise color must be 'white', 'pink' or 'brown', got {color!r}")
    if n <= NOISE_BLOCK:
        return _shaped_block(n, slope, rng)
    out = np.empty(n, dtype=np.float32)
    theta = np.linspace(0, np.pi / 2, NOISE_XFADE, endpoint=False, dtype=np.float64)
    fade_out, fade_in = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    pos = 0  # output written up to here; the last NOISE_XFADE written samples await their cross-fade
    while pos < n:
        block = _shaped_block(NOISE_BLOCK, slope, rng)
        if pos == 0:
            take = min(NOISE_BLOCK, n)
            out[:take] = block[:take]
            pos = take
            continue
        # equal-power join: cos^2 + sin^2 = 1 keeps the variance of independent segments constant
        a = pos - NOISE_XFADE
        out[a:pos] = out[a:pos] * fade_out + block[:NOISE_XFADE] * fade_in
        take = min(NOISE_BLOCK - NOISE_XFADE, n - pos)
        out[pos: pos + take] = block[NOISE_XFADE: NOISE_XFADE + take]
        pos += take
    return out


def _shaped_block(n: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    """White noise shaped by |H(f)| = f^(-slope/2) (flat below NOISE_LOW_HZ, zero at DC), unit variance."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    gain = np.maximum(f, NOISE_LOW_HZ) ** (-slope / 2)
    gain[0] = 0.0
    # white noise has E|X_k|^2 = n per bin, so the output variance is the two-sided mean of gain^2
    weights = np.full(gain.size, 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    gain /= math.sqrt(float(np.einsum("i,i->", weights, gain * gain)) / n)
    return np.fft.irfft(spec * gain, n).astype(np.float32)


def noise_burst(dur_s: float, color: str = "white", rng: np.random.Generator | None = None, *,
                peak: float = DEFAULT_PEAK) -> np.ndarray:
    """A burst of white / pink / brown noise."""
    return _finish(colored_noise(n_samples(dur_s), color, rng), peak)


CLICK_S = 0.006  # seconds: length of one click kernel
CLICK_DECAY_S = 0.0008  # seconds: exponential decay constant of a click
CLICK_HZ = 2500.0  # centre frequency of a click's damped sinusoid


def _click_kernel() -> np.ndarray:
    n = round(CLICK_S * SAMPLE_RATE)
    t = _time(n)
    k = np.sin(2 * np.pi * CLICK_HZ * t) * np.exp(-t / CLICK_DECAY_S)
    return (k / np.abs(k).max()).astype(np.float32)


def click_onsets(rate_hz: float, dur_s: float) -> np.ndarray:
    """Onset times (s, exact sample times) of the clicks in ``click_train(rate_hz, dur_s)``."""
    if not math.isfinite(rate_hz) or rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz!r}")
    n, klen = n_samples(dur_s), round(CLICK_S * SAMPLE_RATE)
    starts = np.round(np.arange(0, n, SAMPLE_RATE / rate_hz)).astype(np.int64)
    return starts[starts + klen <= n] / SAMPLE_RATE


def click_train(rate_hz: float, dur_s: float, *, peak: float = DEFAULT_PEAK) -> np.ndarray:
    """Clicks at ``k / rate_hz`` seconds (see ``click_onsets``); each a 6-ms damped 2.5-kHz sinusoid.

    The click kernel starts at zero phase and needs no fade, so the first click sits exactly at t=0
    rather than being swallowed by a ramp.
    """
    n = n_samples(dur_s)
    out = np.zeros(n, dtype=np.float32)
    kernel = _click_kernel()
    starts = np.round(click_onsets(rate_hz, dur_s) * SAMPLE_RATE).astype(np.int64)
    for k in range(kernel.size):  # loop over the short kernel, vectorised over the clicks
        np.add.at(out, starts + k, kernel[k])
    return _finish(out, peak, fade_s=0.0)


def am_texture(carrier_hz: float, mod_hz: float, dur_s: float, *, depth: float = 1.0,
               peak: float = DEFAULT_PEAK) -> np.ndarray:
    """A sine carrier with raised-cosine amplitude modulation: envelope 1 - depth*(1 - cos(2 pi fm t))/2."""
    _check_freq(carrier_hz, "carrier_hz")
    if not 0 < mod_hz < carrier_hz or not 0 <= depth <= 1:
        raise ValueError(f"need 0 < mod_hz < carrier_hz and 0 <= depth <= 1, got {mod_hz}, {depth}")
    t = _time(n_samples(dur_s))
    env = 1 - depth * 0.5 * (1 - np.cos(2 * np.pi * mod_hz * t))
    return _finish(env * np.sin(2 * np.pi * carrier_hz * t), peak)


def fm_texture(carrier_hz: float, mod_hz: float, index: float, dur_s: float, *,
               peak: float = DEFAULT_PEAK) -> np.ndarray:
    """Frequency modulation: sin(2 pi fc t + index * sin(2 pi fm t))."""
    _check_freq(carrier_hz, "carrier_hz")
    _check_freq(mod_hz, "mod_hz")
    if not math.isfinite(index) or index < 0:
        raise ValueError(f"index must be >= 0, got {index!r}")
    t = _time(n_samples(dur_s))
    return _finish(np.sin(2 * np.pi * carrier_hz * t + index * np.sin(2 * np.pi * mod_hz * t)), peak)


def _additive(f0: float, ratios, amps, n: int, decays_s=None) -> np.ndarray:
    """Sum of sines at f0 * ratio with given amplitudes (optional exponential decay constants, s).

    Partials at or above ``HARMONIC_LIMIT_HZ`` are dropped, so nothing aliases.
    """
    t = _time(n)
    base = 2 * np.pi * f0 * t
    out = np.zeros(n, dtype=np.float64)
    for i, (r, a) in enumerate(zip(ratios, amps)):
        if f0 * r >= HARMONIC_LIMIT_HZ:
            continue
        partial = a * np.sin(r * base)
        if decays_s is not None:
            partial *= np.exp(-t / decays_s[i])
        out += partial
    return out


# ----------------------------------------------------------------------------- event classes


def _beep(rng: np.random.Generator, dur_s: float) -> np.ndarray:
    """Steady pure tone, 0.8-2 kHz."""
    return normalize(tone(rng.uniform(800, 2000), dur_s))


def _siren(rng: np.random.Generator, dur_s: float) -> np.ndarray:
    """Frequency sweeping up and down (triangle law) between ~600 and ~1500 Hz, 0.6-1.4 s per cycle."""
    n = n_samples(dur_s)
    lo, hi, period = rng.uniform(500, 700), rng.uniform(1200, 1600), rng.uniform(0.6, 1.4)
    t = _time(n)
    tri = 1 - np.abs(2 * ((t / period) % 1.0) - 1)  # 0 -> 1 -> 0 each period
    freq = lo + (hi - lo) * tri
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    return normalize(_finish(np.sin(phase), DEFAULT_PEAK))


def _buzz(rng: np.random.Generator, dur_s: float) -> np.ndarray:
    """Harmonic-rich low buzz: band-limited sawtooth at 90-220 Hz with a slight 2-harmonic emphasis."""
    f0 = rng.uniform(90, 220)
    k = np.arange(1, int(HARMONIC_LIMIT_HZ // f0) + 1)
    x = _additive(f0, k, 1.0 / k, n_samples(dur_s))
    return normalize(_finish(x, DEFAULT_PEAK))


def _clicks(rng: np.random.Generator, dur_s: float) -> np.ndarray:
    """Regular clicks at 4-15 per second."""
    return normalize(click_train(rng.uniform(4, 15), dur_s))


def _whoosh(rng: np.random.Generator, dur_s: float) -> np.ndarray:
    """Noise whose spectral band (~2/3 octave) sweeps up or down between 300 Hz and 4 kHz, swelling mid-way."""
    n = n_samples(dur_s)
    f_a, f_b = rng.uniform(300, 600), rng.uniform(2500, 4000)
    if rng.random() < 0.5:
        f_a, f_b = f_b, f_a
    win, hop = 512, 256
    n_frames = n // hop + 2
    centre = f_a * (f_b / f_a) ** np.clip(np.arange(n_frames) / max(n_frames - 1, 1), 0, 1)
    f = np.fft.rfftfreq(win, 1 / SAMPLE_RATE)
    with np.errstate(divide="ignore"):
        octaves = np.log2(np.maximum(f, 1.0)[None, :] / centre[:, None])
    mask = np.exp(-0.5 * (octaves / 0.3) ** 2)
    spec = (rng.standard_normal(mask.shape) + 1j * rng.standard_normal(mask.shape)) * mask
    frames = np.fft.irfft(spec, win, axis=1)
    # sine window at 50 % overlap: w^2 sums to one, so independent frames give stationary variance
    frames *= np.sin(np.pi * (np.arange(win) + 0.5) / win)
    out = np.zeros((n_frames + 1) * hop, dtype=np.float64)
    out[: n_frames * hop].reshape(n_frames, hop)[:] += frames[:, :hop]
    out[hop: (n_frames + 1) * hop].reshape(n_frames, hop)[:] += frames[:, hop:]
    x = out[hop: hop + n]  # skip the first half-frame, which has only one window contributing
    t = np.arange(n) / max(n - 1, 1)
    env = 0.5 + 0.5 * np.sin(np.pi * t)  # starts at half level (sharp onset), swells, returns to half
    return normalize(_finish(x * env, DEFAULT_PEAK))


def _knock(rng: np.random.Generator, dur_s: float) -> np.ndarray:
    """Low decaying thuds (100-180 Hz body + short low-passed noise), repeated every 0.15-0.3 s."""
    n = n_samples(dur_s)
    f_body, interval = rng.uniform(100, 180), rng.uniform(0.15, 0.3)
    klen = min(n, round(0.12 * SAMPLE_RATE))
    t = _time(klen)
    body = np.sin(2 * np.pi * f_body * t) * np.exp(-t / 0.025)
    thud = colored_noise(klen, "brown", rng) * np.exp(-t / 0.006) * 0.5
    kernel = body + thud
    kernel[: min(klen, 16)] *= np.linspace(0, 1, min(klen, 16), endpoint=False)  # 1-ms attack, no click
    out = np.zeros(n, dtype=np.float64)
    for s in np.round(np.arange(0, n, interval * SAMPLE_RATE)).astype(np.int64):
        m = min(klen, n - s)
        out[s: s + m] += kernel[:m]
    return normalize(_finish(out, DEFAULT_PEAK))


BELL_RATIOS = (0.5, 1.0, 1.183, 1.506, 2.0, 2.514, 2.662, 3.011)  # church-bell partials (hum, prime, tierce, ...)


def _bell_event(rng: np.random.Generator, dur_s: float) -> np.ndarray:
    """Struck bell: inharmonic church-bell partials, higher ones decaying faster; fills the duration."""
    n = n_samples(dur_s)
    f0 = rng.uniform(300, 800)
    amps = (0.6, 1.0, 0.8, 0.5, 0.7, 0.4, 0.3, 0.2)
    tau = max(dur_s, 0.1) / 3.0  # the prime falls ~26 dB by the end, so the label's offset is still audible
    decays = [tau * (1.5 if r < 1 else 1.0 / r) for r in BELL_RATIOS]
    return normalize(_finish(_additive(f0, BELL_RATIOS, amps, n, decays), DEFAULT_PEAK))


def _alarm(rng: np.random.Generator, dur_s: float) -> np.ndarray:
    """Pulsed high tone: 2-3.5 kHz carrier fully amplitude-modulated at 3-8 Hz."""
    return normalize(am_texture(rng.uniform(2000, 3500), rng.uniform(3, 8), dur_s, depth=1.0))


EVENT_CLASSES: dict[str, Callable[[np.random.Generator, float], np.ndarray]] = {
    "beep": _beep,
    "siren": _siren,
    "buzz": _buzz,
    "clicks": _clicks,
    "whoosh": _whoosh,
    "knock": _knock,
    "bell": _bell_event,
    "alarm": _alarm,
}


def event_sound(label: str, rng: np.random.Generator, dur_s: float) -> np.ndarray:
    """``EVENT_CLASSES[label](rng, dur_s)`` with a clear error for unknown labels."""
    if label not in EVENT_CLASSES:
        raise ValueError(f"unknown event class {label!r}; known: {', '.join(EVENT_CLASSES)}")
    return EVENT_CLASSES[label](_rng(rng), dur_s)


# ----------------------------------------------------------------------------- music: pitch names

NOTE_NAMES_SHARP = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
NOTE_NAMES_FLAT = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
_NAME_RE = re.compile(r"^([A-Ga-g])([#b♯♭]*)(-?\d+)?$")
_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def midi_to_hz(midi: float) -> float:
    """Equal-tempered frequency of a MIDI note number (69 = A4 = 440 Hz)."""
    return A4_HZ * 2.0 ** ((midi - MIDI_A4) / 12)


def midi_to_name(midi: int, *, flats: bool = False) -> str:
    """Scientific pitch name: 60 -> "C4", 61 -> "C#4" (or "Db4" with ``flats``), 21 -> "A0"."""
    if isinstance(midi, bool) or not isinstance(midi, (int, np.integer)) or not 0 <= midi <= 127:
        raise ValueError(f"midi must be an integer in [0, 127], got {midi!r}")
    names = NOTE_NAMES_FLAT if flats else NOTE_NAMES_SHARP
    return f"{names[midi % 12]}{midi // 12 - 1}"


def _pitch_class(letter: str, accidentals: str) -> int:
    return _LETTER_PC[letter.upper()] + sum(1 if a in "#♯" else -1 for a in accidentals)


def name_to_midi(name: str) -> int:
    """Inverse of ``midi_to_name``: "C4" -> 60, "Bb3" -> 58, "C#-1" -> 1 (octave required)."""
    m = _NAME_RE.match(name.strip()) if isinstance(name, str) else None
    if not m or m.group(3) is None:
        raise ValueError(f"not a pitch name like 'C4', 'F#3' or 'Bb2': {name!r}")
    midi = _pitch_class(m.group(1), m.group(2)) + 12 * (int(m.group(3)) + 1)
    if not 0 <= midi <= 127:
        raise ValueError(f"{name!r} is outside the MIDI range")
    return midi


# ----------------------------------------------------------------------------- music: notes

ATTACK_S = 0.01  # seconds of raised-cosine attack for sustained timbres
RELEASE_S = 0.03  # seconds of raised-cosine release at the end of every note
PLUCK_T60_S = 1.2  # seconds for a Karplus-Strong string to decay by 60 dB

# harmonic number -> amplitude; each has its fundamental as the strongest component
_ORGAN = ((1, 1.0), (2, 0.6), (3, 0.45), (4, 0.3), (6, 0.2), (8, 0.12))
_BELL_NOTE_RATIOS = (1.0, 2.0, 2.76, 4.07, 5.40)  # struck-bar/tubular-bell partials (inharmonic above 2)
_BELL_NOTE_AMPS = (1.0, 0.55, 0.45, 0.3, 0.2)


def _harmonic_series(f0: float, odd_only: bool) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(1, int(HARMONIC_LIMIT_HZ // f0) + 1)
    if odd_only:
        k = k[k % 2 == 1]
    return k.astype(np.float64), 1.0 / k


def _pluck(f0: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong string with an exactly tuned loop.

    The loop is y[i] = x[i] + rho * ((1 - w) y[i-L] + w y[i-L-1]). Its delay at the fundamental is L
    plus the phase delay of the two-tap filter, and w is solved so that this equals SR / f0 exactly
    (an integer L alone would detune high notes by up to a semitone). rho sets a 60-dB decay of
    ``PLUCK_T60_S``. The recurrence only looks back >= L samples, so it runs block by block, each block
    of L samples one vectorised step.
    """
    period = SAMPLE_RATE / f0
    L = int(period)
    d = period - L  # fractional delay the filter must contribute, in [0, 1)
    omega = 2 * np.pi * f0 / SAMPLE_RATE
    td = math.tan(d * omega)
    w = td / (math.sin(omega) + td * (1 - math.cos(omega)))
    rho = 10 ** (-3 * period / (PLUCK_T60_S * SAMPLE_RATE))
    y = np.zeros(n + L + 1, dtype=np.float64)
    # Excitation: the string's initial shape, a triangle plucked at a fraction p of its length
    # (harmonic k gets amplitude ~ sin(k pi p) / k^2, so the fundamental dominates as in a real
    # string) plus a little noise for the attack's texture.
    pos = np.arange(L + 1) / (L + 1)
    p = rng.uniform(0.15, 0.3)
    shape = np.where(pos < p, pos / p, (1 - pos) / (1 - p))
    burst = shape + 0.15 * rng.uniform(-1, 1, L + 1)
    y[: L + 1] = burst - burst.mean()
    a, b = rho * (1 - w), rho * w
    s = L + 1
    while s < y.size:
        e = min(s + L, y.size)
        y[s:e] = a * y[s - L: e - L] + b * y[s - L - 1: e - L - 1]
        s = e
    tone_ = y[L + 1:]  # the excitation itself is not part of the tone
    # The loop passes DC (gain rho), and the excitation's DC over a fractional period is not exactly
    # zero; remove everything below half the fundamental.
    spec = np.fft.rfft(tone_)
    spec[np.fft.rfftfreq(n, 1 / SAMPLE_RATE) < 0.5 * f0] = 0
    return np.fft.irfft(spec, n)


def note(midi: int, dur_s: float, timbre: str = "sine", *, rng: np.random.Generator | None = None) -> np.ndarray:
    """One note of MIDI pitch ``midi`` lasting ``dur_s``, in ``timbre`` (see ``TIMBRES``).

    Every timbre has its fundamental at ``midi_to_hz(midi)`` as its strongest spectral component.
    "pluck" uses ``rng`` for its excitation (default: a fixed seed, so a note is reproducible).
    Normalised to ``REFERENCE_DBFS`` active RMS.
    """
    if isinstance(midi, bool) or not isinstance(midi, (int, np.integer)) or not 0 <= midi <= 127:
        raise ValueError(f"midi must be an integer in [0, 127], got {midi!r}")
    f0 = midi_to_hz(int(midi))
    if f0 >= HARMONIC_LIMIT_HZ:
        raise ValueError(f"note {midi_to_name(int(midi))} ({f0:.0f} Hz) is too high for {SAMPLE_RATE} Hz audio")
    if timbre not in TIMBRES:
        raise ValueError(f"unknown timbre {timbre!r}; known: {', '.join(TIMBRES)}")
    n = n_samples(dur_s)
    x = TIMBRES[timbre](f0, n, rng)
    x = np.asarray(x, dtype=np.float32)
    top = float(np.abs(x).max())
    if top > 0:
        x /= top
    m = min(round(ATTACK_S * SAMPLE_RATE), n // 2)
    if timbre in ("pluck", "bell") or m == 0:  # struck sounds start at full level; just avoid a step
        m = min(round(0.001 * SAMPLE_RATE), n // 2)
    if m:
        x[:m] *= (0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)).astype(np.float32)
    r = min(round(RELEASE_S * SAMPLE_RATE), n // 2)
    if r:
        x[n - r:] *= (0.5 + 0.5 * np.cos(np.pi * np.arange(r) / r)).astype(np.float32)
    return normalize(x)


def _sustain(n: int) -> np.ndarray:
    """A gentle decay (-6 dB over 2 s) so sustained synth notes are not perfectly static."""
    return np.exp(-_time(n) * (math.log(2) / 2.0))


TIMBRES: dict[str, Callable[[float, int, np.random.Generator | None], np.ndarray]] = {
    "sine": lambda f0, n, rng: np.sin(2 * np.pi * f0 * _time(n)) * _sustain(n),
    "square": lambda f0, n, rng: _additive(f0, *_harmonic_series(f0, True), n) * _sustain(n),
    "sawtooth": lambda f0, n, rng: _additive(f0, *_harmonic_series(f0, False), n) * _sustain(n),
    "pluck": lambda f0, n, rng: _pluck(f0, n, rng if rng is not None else np.random.default_rng(0)),
    "organ": lambda f0, n, rng: _additive(f0, *zip(*_ORGAN), n),
    "bell": lambda f0, n, rng: _additive(f0, _BELL_NOTE_RATIOS, _BELL_NOTE_AMPS, n,
                                         [0.9 / r for r in _BELL_NOTE_RATIOS]),
}

CHORD_QUALITIES: dict[str, tuple[int, ...]] = {
    "major": (0, 4, 7),
    "minor": (0, 3, 7),
    "diminished": (0, 3, 6),
    "augmented": (0, 4, 8),
    "sus2": (0, 2, 7),
    "sus4": (0, 5, 7),
    "major7": (0, 4, 7, 11),
    "minor7": (0, 3, 7, 10),
    "dominant7": (0, 4, 7, 10),
}


def chord_notes(root_midi: int, quality: str) -> list[int]:
    """MIDI numbers of the chord tones, root first (e.g. 60 "major" -> [60, 64, 67])."""
    if quality not in CHORD_QUALITIES:
        raise ValueError(f"unknown chord quality {quality!r}; known: {', '.join(CHORD_QUALITIES)}")
    return [int(root_midi) + i for i in CHORD_QUALITIES[quality]]


def chord(root_midi: int, quality: str, dur_s: float, timbre: str = "sine", *,
          rng: np.random.Generator | None = None) -> np.ndarray:
    """The chord's notes (``chord_notes``) sounded together at equal level, normalised."""
    notes = [note(m, dur_s, timbre, rng=rng) for m in chord_notes(root_midi, quality)]
    return normalize(np.sum(notes, axis=0))


# ----------------------------------------------------------------------------- music: rhythm


def _perc_kernel(name: str, rng: np.random.Generator) -> np.ndarray:
    """Short percussion sounds (<= 150 ms) for ``rhythm``."""
    if name == "click":
        return _click_kernel()
    if name == "woodblock":
        t = _time(round(0.06 * SAMPLE_RATE))
        return np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.012) + 0.4 * np.sin(2 * np.pi * 2650 * t) * np.exp(-t / 0.006)
    if name == "kick":
        t = _time(round(0.15 * SAMPLE_RATE))
        f = 50 + 100 * np.exp(-t / 0.03)  # pitch drops from 150 to 50 Hz
        return np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.exp(-t / 0.05)
    if name == "snare":
        t = _time(round(0.12 * SAMPLE_RATE))
        return 0.6 * colored_noise(t.size, "white", rng) * np.exp(-t / 0.03) + np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.02)
    if name == "hihat":
        t = _time(round(0.05 * SAMPLE_RATE))
        spec = np.fft.rfft(colored_noise(t.size, "white", rng))
        spec[np.fft.rfftfreq(t.size, 1 / SAMPLE_RATE) < 5000] = 0  # high-passed noise
        return np.fft.irfft(spec, t.size) * np.exp(-t / 0.01)
    raise AssertionError(name)


PERCUSSION = ("click", "woodblock", "kick", "snare", "hihat")


class Rhythm(NamedTuple):
    """``rhythm``'s result: audio, beat times (the metric grid) and the times and accents of the hits."""

    audio: np.ndarray
    beat_onsets_s: np.ndarray
    hit_onsets_s: np.ndarray
    hit_accents: np.ndarray  # True where the hit is accented ("X")
    bpm: float


def rhythm(bpm: float, beats: int, pattern: str = "Xxxx", timbre: str = "woodblock", *, subdivision: int = 1,
           pitch_midi: int = 76, accent_db: float = 6.0, rng: np.random.Generator | None = None) -> Rhythm:
    """A rhythm ``beats`` beats long at ``bpm``.

    ``pattern`` is cycled over the steps, ``subdivision`` steps per beat: "X" an accented hit, "x" a
    hit ``accent_db`` quieter, "." a rest. Step i starts at exactly round(i * 60 / bpm / subdivision
    * 16000) samples, and the reported times are those sample times. ``timbre`` is a ``PERCUSSION``
    sound or any ``TIMBRES`` entry (played at ``pitch_midi`` for 80 % of a step). The audio lasts
    exactly ``beats`` beats; its last hit may ring past the end and is cut (with a short release).
    """
    if not math.isfinite(bpm) or not 20 <= bpm <= 400:
        raise ValueError(f"bpm must be in [20, 400], got {bpm!r}")
    if isinstance(beats, bool) or not isinstance(beats, (int, np.integer)) or beats < 1:
        raise ValueError(f"beats must be a positive integer, got {beats!r}")
    if not pattern or set(pattern) - set("Xx."):
        raise ValueError(f"pattern must be a non-empty string of 'X', 'x' and '.', got {pattern!r}")
    if not isinstance(subdivision, int) or subdivision < 1:
        raise ValueError(f"subdivision must be a positive integer, got {subdivision!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    step_s = 60.0 / bpm / subdivision
    n = n_samples(beats * 60.0 / bpm)
    steps = beats * subdivision
    starts = np.round(np.arange(steps) * step_s * SAMPLE_RATE).astype(np.int64)
    symbols = [pattern[i % len(pattern)] for i in range(steps)]
    if timbre in PERCUSSION:
        kernel = np.asarray(_perc_kernel(timbre, rng), dtype=np.float64)
    elif timbre in TIMBRES:
        kernel = note(pitch_midi, 0.8 * step_s, timbre, rng=rng).astype(np.float64)
    else:
        raise ValueError(f"unknown timbre {timbre!r}; known: {', '.join(PERCUSSION + tuple(TIMBRES))}")
    kernel /= np.abs(kernel).max()
    out = np.zeros(n, dtype=np.float64)
    soft = 10 ** (-accent_db / 20)
    for s, sym in zip(starts, symbols):
        if sym == ".":
            continue
        m = min(kernel.size, n - s)
        out[s: s + m] += kernel[:m] * (1.0 if sym == "X" else soft)
    hits = [i for i, sym in enumerate(symbols) if sym != "."]
    beat_starts = starts[::subdivision]
    audio = normalize(_release(out.astype(np.float32)))
    return Rhythm(audio, beat_starts / SAMPLE_RATE, starts[hits] / SAMPLE_RATE,
                  np.array([symbols[i] == "X" for i in hits], dtype=bool), float(bpm))


def _release(x: np.ndarray) -> np.ndarray:
    """Raised-cosine release over the last ``RELEASE_S`` (the start is left sharp)."""
    r = min(round(RELEASE_S * SAMPLE_RATE), x.size // 2)
    if r:
        x[x.size - r:] *= (0.5 + 0.5 * np.cos(np.pi * np.arange(r) / r)).astype(x.dtype)
    return x


# ----------------------------------------------------------------------------- music: melody

MODES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),  # natural minor
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
}
# Keys conventionally written with flats, by the tonic of their relative major scale.
_FLAT_MAJOR_TONICS = {5, 10, 3, 8, 1, 6}  # F Bb Eb Ab Db Gb
# semitones from a mode's tonic up to its relative major's tonic (A minor -> C, D dorian -> C, ...)
_RELATIVE_MAJOR = {"major": 0, "minor": 3, "harmonic_minor": 3, "dorian": 10, "mixolydian": 5, "pentatonic": 0}


@dataclass(frozen=True)
class NoteEvent:
    """One note of a melody: pitch (MIDI and name) and exact onset/offset in seconds."""

    midi: int
    name: str
    onset_s: float
    offset_s: float


@dataclass(frozen=True)
class Melody:
    """``melody_in_key``'s result: the audio and its notes in time order."""

    audio: np.ndarray
    notes: list[NoteEvent]
    key: str
    mode: str
    bpm: float


def key_pitch_class(key: str) -> int:
    """Pitch class 0..11 of a key name such as "C", "F#", "Bb"."""
    m = _NAME_RE.match(key.strip()) if isinstance(key, str) else None
    if not m or m.group(3) is not None:
        raise ValueError(f"not a key name like 'C', 'F#' or 'Bb': {key!r}")
    return _pitch_class(m.group(1), m.group(2)) % 12


def melody_in_key(key: str, mode: str, n_notes: int, bpm: float, timbre: str, rng: np.random.Generator, *,
                  octave: int = 4, durations_beats: tuple[float, ...] = (0.5, 1.0, 1.0, 2.0),
                  legato: float = 0.85) -> Melody:
    """A random melody of ``n_notes`` notes in ``key`` ``mode`` at ``bpm``.

    Starts and ends on the tonic (octave ``octave``) so the key is audible, moves by scale steps of at
    most a third, stays within a tonic-to-tenth range, and draws each note's length from
    ``durations_beats``. Each note sounds for ``legato`` of its slot, so repeated pitches are separate
    onsets; ``notes`` carries the exact onset/offset of the sounding part. Names use flats in flat keys.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    if isinstance(n_notes, bool) or not isinstance(n_notes, (int, np.integer)) or n_notes < 1:
        raise ValueError(f"n_notes must be a positive integer, got {n_notes!r}")
    if not math.isfinite(bpm) or not 20 <= bpm <= 400:
        raise ValueError(f"bpm must be in [20, 400], got {bpm!r}")
    if not 0 < legato <= 1:
        raise ValueError(f"legato must be in (0, 1], got {legato!r}")
    rng = _rng(rng)
    scale = MODES[mode]
    tonic = key_pitch_class(key) + 12 * (octave + 1)
    relative_major = (key_pitch_class(key) + _RELATIVE_MAJOR[mode]) % 12
    flats = relative_major in _FLAT_MAJOR_TONICS
    top_degree = len(scale) + 2  # up to a tenth above the tonic

    def degree_midi(deg: int) -> int:
        octs, idx = divmod(deg, len(scale))
        return tonic + 12 * octs + scale[idx]

    degrees = [0]
    for _ in range(n_notes - 2):
        step = int(rng.choice([-2, -1, -1, 1, 1, 2]))
        nxt = degrees[-1] + step
        if not 0 <= nxt <= top_degree:
            nxt = degrees[-1] - step
        degrees.append(nxt)
    if n_notes > 1:
        degrees.append(0)
    beat_s = 60.0 / bpm
    lengths = rng.choice(np.asarray(durations_beats, dtype=np.float64), size=n_notes)
    slot_starts = np.concatenate([[0.0], np.cumsum(lengths)[:-1]]) * beat_s
    total = n_samples(float(lengths.sum()) * beat_s)
    out = np.zeros(total, dtype=np.float32)
    events = []
    for deg, start_s, len_beats in zip(degrees, slot_starts, lengths):
        midi = degree_midi(deg)
        if not 0 <= midi <= 127 or midi_to_hz(midi) >= HARMONIC_LIMIT_HZ:
            raise ValueError(f"key {key} octave {octave} puts notes outside the playable range")
        s = round(start_s * SAMPLE_RATE)
        x = note(midi, len_beats * beat_s * legato, timbre, rng=rng)
        m = min(x.size, total - s)
        out[s: s + m] += x[:m]
        events.append(NoteEvent(midi, midi_to_name(midi, flats=flats), s / SAMPLE_RATE, (s + x.size) / SAMPLE_RATE))
    return Melody(normalize(out), events, key, mode, float(bpm))


# ----------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Event:
    """A sound placed in a scene: [onset_s, offset_s) exactly as mixed (sample times), with its gain."""

    label: str
    onset_s: float
    offset_s: float
    gain_db: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.offset_s - self.onset_s

    @property
    def onset_sample(self) -> int:
        return round(self.onset_s * SAMPLE_RATE)

    @property
    def offset_sample(self) -> int:
        return round(self.offset_s * SAMPLE_RATE)


class Scene:
    """A timeline of ``duration_s`` seconds onto which sounds are mixed as they are added.

    The mix lives in one float32 buffer (4 bytes per sample: 115 MB for 30 minutes), so memory does not
    grow with the number of events. ``rng`` draws the background noise in ``render``.
    """

    def __init__(self, duration_s: float, rng: np.random.Generator):
        self.n = n_samples(duration_s)
        self.duration_s = self.n / SAMPLE_RATE
        self.rng = _rng(rng)
        self._mix = np.zeros(self.n, dtype=np.float32)
        self._events: list[Event] = []
        self.output_gain_db = 0.0  # scaling applied by the last render to respect its peak limit

    @property
    def events(self) -> list[Event]:
        """Events sorted by onset (then offset, label)."""
        return sorted(self._events, key=lambda e: (e.onset_s, e.offset_s, e.label))

    def add(self, audio: np.ndarray, onset_s: float, label: str, gain_db: float = 0.0, **meta) -> Event:
        """Mix ``audio`` (scaled by ``gain_db``) in at ``onset_s``; returns the exact ``Event``.

        The onset is rounded to the nearest sample and the event must fit in the scene. Extra keyword
        arguments are kept in ``Event.meta`` (e.g. a transcript or speaker id).
        """
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise ValueError(f"audio must be a non-empty 1-D array, got shape {audio.shape}")
        if not math.isfinite(onset_s) or onset_s < 0:
            raise ValueError(f"onset_s must be >= 0, got {onset_s!r}")
        if not math.isfinite(gain_db):
            raise ValueError(f"gain_db must be finite, got {gain_db!r}")
        start = round(onset_s * SAMPLE_RATE)
        end = start + audio.size
        if end > self.n:
            raise ValueError(f"event {label!r} [{start / SAMPLE_RATE:.3f}, {end / SAMPLE_RATE:.3f}) s runs past the "
                             f"scene's end at {self.duration_s:.3f} s")
        self._mix[start:end] += audio * np.float32(10 ** (gain_db / 20))
        event = Event(label, start / SAMPLE_RATE, end / SAMPLE_RATE, float(gain_db), dict(meta))
        self._events.append(event)
        return event

    def active_spans(self) -> list[tuple[int, int]]:
        """Union of the events' [onset, offset) sample spans, merged and sorted."""
        spans: list[tuple[int, int]] = []
        for a, b in sorted((e.onset_sample, e.offset_sample) for e in self._events):
            if spans and a <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], b))
            else:
                spans.append((a, b))
        return spans

    def clean(self) -> np.ndarray:
        """A copy of the mix without background noise."""
        return self._mix.copy()

    def render(self, noise_color: str | None = "pink", snr_db: float | None = 20.0, *,
               peak_limit: float | None = MAX_PEAK) -> tuple[np.ndarray, list[Event]]:
        """The mix plus ``noise_color`` noise at ``snr_db`` (see the module doc for the SNR definition).

        ``noise_color=None`` or ``snr_db=None`` renders without noise. If the result would exceed
        ``peak_limit`` the whole scene (sounds and noise together) is scaled down, which keeps every
        relative level and the SNR; the factor applied is left in ``self.output_gain_db`` (0 when none).
        ``peak_limit=None`` never scales. Each call draws fresh noise from the scene's generator.
        Returns (wave, events sorted by onset).
        """
        if noise_color is None or snr_db is None:
            wave = self._mix.copy()
        else:
            spans = self.active_spans()
            if not spans:
                raise ValueError("a scene without events has no signal to set an SNR against")
            wave = colored_noise(self.n, noise_color, self.rng)
            g = _noise_gain(_sum_squares(self._mix, spans), _sum_squares(wave, spans), snr_db)
            wave *= np.float32(g)
            wave += self._mix
        self.output_gain_db = 0.0
        peak = float(np.abs(wave).max())
        if peak_limit is not None and peak > peak_limit:
            wave *= np.float32(peak_limit / peak)
            self.output_gain_db = 20 * math.log10(peak_limit / peak)
        return wave, self.events


# ----------------------------------------------------------------------------- files

FLAC_FRAME = 4608  # samples per FLAC frame handed to the encoder


def write_flac(path, wave: np.ndarray) -> None:
    """Write float32 mono 16-kHz samples as 16-bit FLAC (values outside [-1, 1) are clipped).

    Samples are quantised as round(x * 32768), the inverse of ``afnext.audio.load_audio``'s int16
    scaling, so reading the file back returns ``wave`` to within half a 16-bit step.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"wave must be a non-empty 1-D array, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("wave contains NaN or infinite samples")
    with av.open(str(path), mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        stream.format = "s16"
        for s in range(0, wave.size, FLAC_FRAME):  # quantise frame by frame: no full-length temporaries
            block = np.clip(np.round(wave[s: s + FLAC_FRAME].astype(np.float64) * 32768.0), -32768, 32767)
            block = block.astype(np.int16)
            frame = av.AudioFrame.from_ndarray(block[None, :], format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = s
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
