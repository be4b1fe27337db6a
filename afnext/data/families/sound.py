"""Sound, music, temporal, multi-audio, caption and reasoning task families of the synthetic corpus.

Every family here follows the contract of ``afnext.data.families`` (``(rng, index) -> Item``, all
randomness from ``rng``) and builds its audio with ``afnext.data.sounds``, so the ground truth in
``extra["labels"]`` is exact by construction: an event placed at 12.4 s starts at sample 198,400.

Design choices shared by the families:

* **Time grid.** Short-clip events start and last whole multiples of ``GRID_S`` (0.1 s); long-clip
  events start on whole seconds (``LONG_GRID_S``). Answers are written with one decimal ("12.4s")
  or as m:ss, so the written answer *equals* the label instead of being a rounding of it (no 12.45
  ambiguity), and checking an answer is string comparison.
* **Placement.** Events never overlap and keep a minimum silent gap (``_layout``): each question
  then has one unambiguous answer, and the tests can re-detect every onset from the waveform with an
  energy detector.
* **Background.** Every clip carries white, pink or brown noise at an exact SNR (``Scene.render``'s
  definition: power over the events' spans), recorded in the labels as ``noise`` and ``snr_db``.
  Sounds with a soft start (a whoosh swelling from half level, speech opening on a weak consonant)
  raise the scene's SNR floor (``CLASS_MIN_SNR_DB``), so that no label claims an onset that is
  buried in the background. Long clips use very quiet noise (45-55 dB below the events), which
  keeps FLAC at ~0.5 MB per minute (16 MB for 30 minutes, a third of a noisy short clip's rate).
* **Answers.** Short and machine-checkable: a class name, "the siren", "3", "A4", "120 BPM",
  "[12.4s - 15.0s]". Multiple-choice items carry MMAU-style fields (``question``, ``choices``,
  ``answer`` verbatim in ``choices`` exactly once, ``category``, ``sub_category``, ``difficulty``,
  and ``domain``: MMAU's "sound"/"music"/"speech" task) and the gpt answer is the answer string.
  Each question has several phrasings drawn at random, so the model learns the task, not a sentence.
* **Long durations.** ``long_event_grounding`` draws its length as a fraction of ``LONG_DURATION_S``;
  tests shorten that range with ``long_durations(lo, hi)`` without changing any other draw.

Families: sound_class (MC), sound_count, sound_order, loudness_compare, duration_compare,
event_onset, event_onset_short, event_span, long_event_grounding (long), music_tempo, music_tempo_mc, music_pitch,
music_pitch_mc, music_timbre (MC), music_key (MC), chord_quality (MC), multi_audio_compare,
dense_caption, think_temporal.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from afnext.audio import SAMPLE_RATE
from afnext.data import sounds as S
from afnext.data.families import Item, family

# ----------------------------------------------------------------------------- constants

GRID_S = 0.1  # seconds: onset/length grid of short-clip events (answers have one decimal)
LONG_GRID_S = 1.0  # seconds: onset grid of long-clip events (answers in m:ss are exact)
UNITS_PER_S = round(1 / GRID_S)  # grid units per second
MIN_GAP_S = 0.6  # seconds of silence between events (an energy detector sees them apart)
EDGE_S = 0.3  # seconds kept free at both ends of a short clip
SNR_DB = (10.0, 30.0)  # dB: background-noise range for sound-event clips
MUSIC_SNR_DB = (20.0, 40.0)  # dB: music clips (pitch and key need a clean-ish signal)
LONG_SNR_DB = (45.0, 55.0)  # dB: long clips, quiet so 30 minutes of FLAC stay ~16 MB
LONG_DURATION_S = (600.0, 1800.0)  # seconds: 10-30 minute long clips
LONG_EDGE_S = 5.0  # seconds kept free at both ends of a long clip
LONG_MIN_GAP_S = 20.0  # seconds between events of a long clip ("sparse")
NOISE_COLORS = ("white", "pink", "brown")
# Lowest scene SNR (dB) for sounds with a soft start. A whoosh swells from half level inside a narrow
# band, and a phrase often opens with a weak consonant; below these SNRs their first tens of ms sink
# into the background, so the labelled onset would be later than anything audible (measured with the
# whitened energy detector of the tests: onsets then agree with the labels within 20 ms).
CLASS_MIN_SNR_DB = {"whoosh": 18.0, "speech": 15.0}

EVENT_LABELS = tuple(S.EVENT_CLASSES)  # the eight event classes, exact label strings
# How a question names each class ("the siren"), and how a caption describes it.
NOUN = {"beep": "beep", "siren": "siren", "buzz": "buzz", "clicks": "clicking", "whoosh": "whoosh",
        "knock": "knocking", "bell": "bell", "alarm": "alarm"}
CAPTION = {"beep": "a steady electronic beep", "siren": "a siren wails, rising and falling",
           "buzz": "a low electric buzz hums", "clicks": "rapid regular clicking",
           "whoosh": "a whoosh sweeps past", "knock": "someone knocks", "bell": "a bell rings and fades",
           "alarm": "a high-pitched alarm pulses"}
# Event lengths per class (seconds): long enough to be recognisable, short enough to fit many per clip.
EVENT_DURATION_S = {"beep": (0.3, 1.5), "siren": (1.0, 3.0), "buzz": (0.5, 2.0), "clicks": (0.6, 2.0),
                    "whoosh": (0.6, 2.0), "knock": (0.5, 1.2), "bell": (0.8, 2.5), "alarm": (0.8, 2.5)}
# Classes that are one sound per event. Clicks, knocks and alarm pulses are trains of sub-sounds, so
# "how many times do you hear a knock?" would be ambiguous; they only appear as distractors.
COUNTABLE = ("beep", "siren", "buzz", "whoosh", "bell")
SUSTAINED = ("beep", "siren", "buzz", "whoosh", "alarm")  # steady sounds whose length is unmistakable

TIMBRE_NAMES = {"sine": "sine wave", "square": "square wave", "sawtooth": "sawtooth wave",
                "pluck": "plucked string", "organ": "organ", "bell": "bell"}
RHYTHM_TIMBRES = ("click", "woodblock", "kick", "snare", "hihat", "pluck")
RHYTHM_PATTERNS = ("Xxxx", "Xxx", "Xx", "XxXx", "X")  # every beat is hit, so the tempo is unambiguous
TEMPO_BPM = (60, 180)  # beats per minute, inclusive
TEMPO_MIN_RATIO = 1.15  # MC tempo choices differ pairwise by at least 15 %
PITCH_MIDI = (48, 84)  # C3..C6 inclusive
CHORD_ROOT_MIDI = (48, 67)  # C3..G4 inclusive
# Key names as musicians write them, by pitch class (sharps or flats per key signature).
MAJOR_KEYS = {0: "C", 7: "G", 2: "D", 9: "A", 4: "E", 11: "B", 6: "F#", 5: "F", 10: "Bb", 3: "Eb", 8: "Ab", 1: "Db"}
MINOR_KEYS = {9: "A", 4: "E", 11: "B", 6: "F#", 1: "C#", 8: "G#", 2: "D", 7: "G", 0: "C", 5: "F", 10: "Bb", 3: "Eb"}
KEY_NAMES = {"major": MAJOR_KEYS, "minor": MINOR_KEYS}

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
LETTERS = "ABCDEFGH"

SPEECH_PHRASES = (
    "please close the door", "the train leaves at nine", "can you hear me now", "turn left at the corner",
    "the meeting starts soon", "watch your step", "it is going to rain today", "call me back later",
    "the kettle is boiling", "we are almost there", "keep the noise down please", "dinner is ready",
)


# ----------------------------------------------------------------------------- small helpers


def _pick(rng: np.random.Generator, seq):
    """One element of a sequence (plain Python type, unlike ``rng.choice`` on a list of str)."""
    return seq[int(rng.integers(len(seq)))]


def _sample(rng: np.random.Generator, seq, k: int) -> list:
    """``k`` distinct elements of ``seq`` in random order."""
    return [seq[i] for i in rng.permutation(len(seq))[:k]]


def _t(units: int) -> float:
    """Grid units -> seconds, as the float the label stores (12.4, not 12.400000000000002)."""
    return round(units * GRID_S, 1)


def _fmt(seconds: float) -> str:
    return f"{seconds:.1f}s"


def _mmss(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


def _units(rng: np.random.Generator, lo_s: float, hi_s: float) -> int:
    """A random length on the grid, in units, within [lo_s, hi_s]."""
    return int(rng.integers(round(lo_s * UNITS_PER_S), round(hi_s * UNITS_PER_S) + 1))


def _event_units(rng: np.random.Generator, label: str, cap_s: float | None = None) -> int:
    lo, hi = EVENT_DURATION_S[label]
    if cap_s is not None:
        hi = max(lo, min(hi, cap_s))
    return _units(rng, lo, hi)


def _min_snr(labels) -> float:
    return max((CLASS_MIN_SNR_DB.get(lab, -math.inf) for lab in labels), default=-math.inf)


def _noise(rng: np.random.Generator, snr_range=SNR_DB, labels=()) -> tuple[str, float]:
    """Background colour and SNR (dB, one decimal); the range's floor is raised to ``CLASS_MIN_SNR_DB``
    of the classes in the scene."""
    lo, hi = snr_range
    lo = min(hi, max(lo, _min_snr(labels)))
    return _pick(rng, NOISE_COLORS), round(float(rng.uniform(lo, hi)), 1)


def _difficulty(snr_db: float) -> str:
    return "easy" if snr_db >= 20 else "medium" if snr_db >= 14 else "hard"


def _layout(rng: np.random.Generator, lengths: list[int], total: int, gap: int, edge: int) -> list[int]:
    """Onsets for events of ``lengths`` (in this order), non-overlapping, >= ``gap`` apart, inside
    [edge, total - edge]. The free time is split at uniformly random cut points (stars and bars), so
    any arrangement of the slack is possible. All arguments and results are in grid units."""
    slack = total - 2 * edge - sum(lengths) - gap * (len(lengths) - 1)
    if slack < 0:
        raise ValueError(f"{len(lengths)} events of {sum(lengths)} units do not fit in {total} units")
    cuts = np.sort(rng.integers(0, slack + 1, size=len(lengths)))
    spaces = np.diff(np.concatenate([[0], cuts]))
    onsets, pos = [], edge
    for i, (length, space) in enumerate(zip(lengths, spaces)):
        pos += int(space) + (gap if i else 0)
        onsets.append(pos)
        pos += length
    return onsets


def _fit_total(rng: np.random.Generator, lengths: list[int], gap: int, edge: int, extra_s=(1.0, 4.0),
               min_s: float = 0.0) -> int:
    """A clip length (units, whole seconds) holding the events plus a random amount of spare time."""
    need = sum(lengths) + gap * (len(lengths) - 1) + 2 * edge + _units(rng, *extra_s)
    return max(math.ceil(need / UNITS_PER_S), math.ceil(min_s)) * UNITS_PER_S


def _event_dict(e: S.Event) -> dict:
    d = {"label": e.label, "onset_s": e.onset_s, "offset_s": e.offset_s, "gain_db": e.gain_db}
    d.update(e.meta)
    return d


def _render(rng: np.random.Generator, total_s: float, placed, noise: tuple[str, float]):
    """Mix ``placed`` = [(label, audio, onset_s, gain_db, meta)] into a ``total_s`` scene with noise.
    Returns (wave, [event dicts in onset order])."""
    scene = S.Scene(total_s, rng)
    for label, audio, onset_s, gain_db, meta in placed:
        scene.add(audio, onset_s, label, gain_db, **meta)
    wave, events = scene.render(*noise)
    return wave, [_event_dict(e) for e in events]


def _event_scene(rng: np.random.Generator, labels: list[str], lengths: list[int], total: int, *,
                 gap_s: float = MIN_GAP_S, edge_s: float = EDGE_S, noise=None, gains=None):
    """Events of ``labels`` (in this order) with ``lengths`` (units) laid out in a ``total``-unit clip."""
    onsets = _layout(rng, lengths, total, round(gap_s * UNITS_PER_S), round(edge_s * UNITS_PER_S))
    noise = noise or _noise(rng, labels=labels)
    gains = gains or [0.0] * len(labels)
    placed = [(lab, S.event_sound(lab, rng, _t(n)), _t(on), g, {})
              for lab, n, on, g in zip(labels, lengths, onsets, gains)]
    wave, events = _render(rng, _t(total), placed, noise)
    return wave, events, noise


def _labels(events, noise, total_s, **more) -> dict:
    return {"events": events, "noise": noise[0], "snr_db": noise[1], "duration_s": total_s, **more}


def _conv(question: str, answer: str, n_sounds: int = 1) -> list[dict]:
    if n_sounds == 1:
        head = "<sound>\n"
    else:
        head = "".join(f"Clip {k}: <sound-{k}>\n" for k in range(1, n_sounds + 1))
    return [{"from": "human", "value": head + question}, {"from": "gpt", "value": answer}]


def _item(name: str, audios, prompt: str, reply: str, task: str, labels: dict, **extra) -> Item:
    """An Item whose human turn is the placeholder(s) plus ``prompt`` and whose gpt turn is ``reply``."""
    return Item("", name, list(audios), _conv(prompt, reply, len(audios)), {"task": task, "labels": labels, **extra})


MC_INSTRUCTIONS = ("Choose one of the options.", "Answer with one of the choices.",
                   "Pick the correct option.", "Select the best answer from the choices.")


def _mc_item(rng: np.random.Generator, name: str, wave, question: str, answer: str, distractors: list[str],
             task: str, labels: dict, *, category: str, sub_category: str, domain: str, difficulty: str) -> Item:
    """A multiple-choice item: choices shuffled, listed as (A) ..., the gpt answer is the answer text."""
    choices = [answer, *distractors]
    if len(set(choices)) != len(choices):
        raise AssertionError(f"{name}: repeated choices {choices}")
    choices = [choices[i] for i in rng.permutation(len(choices))]
    listed = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    prompt = f"{question}\n{listed}\n{_pick(rng, MC_INSTRUCTIONS)}"
    return _item(name, [wave], prompt, answer, task, labels, question=question, choices=choices, answer=answer,
                 category=category, sub_category=sub_category, domain=domain, difficulty=difficulty)


# ----------------------------------------------------------------------------- sound events

CLASS_QUESTIONS = ("What sound can be heard in this recording?", "Which sound event occurs in the clip?",
                   "Identify the sound you hear.", "What is making the sound in this audio?",
                   "Which of these sounds is present?")


@family("sound_class", skill="sound", multiple_choice=True)
def sound_class(rng: np.random.Generator, index: int) -> Item:
    """One event of one of the eight classes in noise; MC over four class names."""
    label = _pick(rng, EVENT_LABELS)
    n = _event_units(rng, label)
    total = _fit_total(rng, [n], 0, round(EDGE_S * UNITS_PER_S), extra_s=(1.0, 5.0), min_s=3.0)
    wave, events, noise = _event_scene(rng, [label], [n], total, noise=_noise(rng, (8.0, 30.0), [label]))
    distractors = _sample(rng, [NOUN[x] for x in EVENT_LABELS if x != label], 3)
    return _mc_item(rng, "sound_class", wave, _pick(rng, CLASS_QUESTIONS), NOUN[label], distractors,
                    "sound_classification", _labels(events, noise, _t(total), **{"class": label}),
                    category="Information Extraction", sub_category="Sound-Based Event Recognition",
                    domain="sound", difficulty=_difficulty(noise[1]))


COUNT_QUESTIONS = ("How many times do you hear a {x}?", "How many times does the {x} sound?",
                   "Count the {x} sounds in this clip.", "How often can a {x} be heard?")


@family("sound_count", skill="sound")
def sound_count(rng: np.random.Generator, index: int) -> Item:
    """1-6 events of one countable class among 0-2 other-class distractors; answer a digit or a word."""
    target = _pick(rng, COUNTABLE)
    count = int(rng.integers(1, 7))
    others = _sample(rng, [x for x in EVENT_LABELS if x != target], int(rng.integers(0, 3)))
    labels = [target] * count + others
    labels = [labels[i] for i in rng.permutation(len(labels))]
    lengths = [_event_units(rng, lab, cap_s=1.2) for lab in labels]
    total = _fit_total(rng, lengths, round(MIN_GAP_S * UNITS_PER_S), round(EDGE_S * UNITS_PER_S))
    wave, events, noise = _event_scene(rng, labels, lengths, total)
    digits = bool(rng.integers(2))
    question = _pick(rng, COUNT_QUESTIONS).format(x=NOUN[target])
    question += " Answer with a number." if digits else " Answer with a number word."
    answer = str(count) if digits else NUMBER_WORDS[count]
    return _item("sound_count", [wave], question, answer, "sound_counting",
                 _labels(events, noise, _t(total), target=target, count=count))


ORDER_QUESTIONS = {
    "first": ("Which came first, the {a} or the {b}?", "Which do you hear first: the {a} or the {b}?",
              "Does the {a} or the {b} occur earlier?"),
    "last": ("Which came last, the {a} or the {b}?", "Which is heard later: the {a} or the {b}?",
             "Does the {a} or the {b} occur later in the clip?"),
}


@family("sound_order", skill="temporal")
def sound_order(rng: np.random.Generator, index: int) -> Item:
    """Two or three distinct events; which of two named ones comes first (or last)."""
    labels = _sample(rng, EVENT_LABELS, int(rng.integers(2, 4)))
    lengths = [_event_units(rng, lab) for lab in labels]
    total = _fit_total(rng, lengths, round(MIN_GAP_S * UNITS_PER_S), round(EDGE_S * UNITS_PER_S))
    wave, events, noise = _event_scene(rng, labels, lengths, total)
    a, b = _sample(rng, labels, 2)  # order in the question is random, independent of the timeline
    ask = _pick(rng, ("first", "last"))
    onset = {e["label"]: e["onset_s"] for e in events}
    early = a if onset[a] < onset[b] else b
    winner = early if ask == "first" else (b if early == a else a)
    question = _pick(rng, ORDER_QUESTIONS[ask]).format(a=NOUN[a], b=NOUN[b])
    return _item("sound_order", [wave], question, f"the {NOUN[winner]}", "event_order",
                 _labels(events, noise, _t(total), asked=[a, b], which=ask, answer_label=winner))


LOUDNESS_QUESTIONS = {
    "louder": ("Which is louder, the {a} or the {b}?", "Which sound is louder: the {a} or the {b}?",
               "Is the {a} or the {b} played at a higher level?"),
    "quieter": ("Which is quieter, the {a} or the {b}?", "Which sound is softer: the {a} or the {b}?",
                "Is the {a} or the {b} played at a lower level?"),
}


@family("loudness_compare", skill="sound")
def loudness_compare(rng: np.random.Generator, index: int) -> Item:
    """Two distinct events whose levels differ by 6-15 dB; which is louder (or quieter).

    Levels are active-RMS gains relative to ``sounds.REFERENCE_DBFS``. The noise is set so that the
    *quieter* event still stands 10-20 dB above it (``quiet_snr_db``); the scene SNR recorded in
    ``snr_db`` follows from that (Scene.render's definition over both events' spans).
    """
    a, b = _sample(rng, EVENT_LABELS, 2)
    loud_gain = round(float(rng.uniform(-3.0, 0.0)), 1)
    diff = round(float(rng.uniform(6.0, 15.0)), 1)
    gains = [loud_gain, round(loud_gain - diff, 1)] if rng.integers(2) else [round(loud_gain - diff, 1), loud_gain]
    labels = [a, b]
    lengths = [_event_units(rng, lab) for lab in labels]
    total = _fit_total(rng, lengths, round(MIN_GAP_S * UNITS_PER_S), round(EDGE_S * UNITS_PER_S))
    onsets = _layout(rng, lengths, total, round(MIN_GAP_S * UNITS_PER_S), round(EDGE_S * UNITS_PER_S))
    scene = S.Scene(_t(total), rng)
    for lab, n, on, g in zip(labels, lengths, onsets, gains):
        scene.add(S.event_sound(lab, rng, _t(n)), _t(on), lab, g)
    quiet_snr = round(float(rng.uniform(min(20.0, max(10.0, _min_snr(labels))), 20.0)), 1)
    mix = scene.clean().astype(np.float64)
    spans = scene.active_spans()
    span_power = sum(float(np.dot(mix[s:e], mix[s:e])) for s, e in spans) / sum(e - s for s, e in spans)
    quiet = [ev for ev in scene.events if ev.gain_db == min(gains)][0]
    seg = mix[quiet.onset_sample:quiet.offset_sample]
    noise_power = float(np.dot(seg, seg)) / seg.size / 10 ** (quiet_snr / 10)
    noise = (_pick(rng, NOISE_COLORS), round(10 * math.log10(span_power / noise_power), 2))
    wave, evs = scene.render(*noise)
    events = [_event_dict(e) for e in evs]
    ask = _pick(rng, ("louder", "quieter"))
    louder = a if gains[0] > gains[1] else b
    winner = louder if ask == "louder" else (b if louder == a else a)
    x, y = _sample(rng, labels, 2)
    question = _pick(rng, LOUDNESS_QUESTIONS[ask]).format(a=NOUN[x], b=NOUN[y])
    return _item("loudness_compare", [wave], question, f"the {NOUN[winner]}", "loudness_comparison",
                 _labels(events, noise, _t(total), which=ask, answer_label=winner, level_difference_db=diff,
                         quiet_snr_db=quiet_snr))


DURATION_QUESTIONS = {
    "longer": ("Which lasts longer, the {a} or the {b}?", "Which sound is longer: the {a} or the {b}?",
               "Is the {a} or the {b} heard for a longer time?"),
    "shorter": ("Which is shorter, the {a} or the {b}?", "Which sound is briefer: the {a} or the {b}?",
                "Is the {a} or the {b} heard for a shorter time?"),
}
SAME_DURATION_QUESTIONS = {
    "longer": ("The {x} sounds twice. Which time is longer, the first or the second?",
               "You hear two {x} sounds. Is the first or the second one longer?"),
    "shorter": ("The {x} sounds twice. Which time is shorter, the first or the second?",
                "You hear two {x} sounds. Is the first or the second one shorter?"),
}


@family("duration_compare", skill="temporal")
def duration_compare(rng: np.random.Generator, index: int) -> Item:
    """Two events whose lengths differ by >= 50 % and >= 0.5 s: which is longer (or shorter).

    Half the items use two different classes ("the siren"), half the same sustained class twice
    ("the first one" / "the second one").
    """
    same = bool(rng.integers(2))
    labels = [_pick(rng, SUSTAINED)] * 2 if same else _sample(rng, EVENT_LABELS, 2)
    short = _units(rng, 0.4, 1.2)
    long_ = max(short + 5, math.ceil(short * 1.5)) + int(rng.integers(0, 11))
    lengths = [short, long_] if rng.integers(2) else [long_, short]
    total = _fit_total(rng, lengths, round(MIN_GAP_S * UNITS_PER_S), round(EDGE_S * UNITS_PER_S))
    wave, events, noise = _event_scene(rng, labels, lengths, total)
    ask = _pick(rng, ("longer", "shorter"))
    longer_i = 0 if lengths[0] > lengths[1] else 1
    win = longer_i if ask == "longer" else 1 - longer_i  # events come back in onset order = layout order
    if same:
        question = _pick(rng, SAME_DURATION_QUESTIONS[ask]).format(x=NOUN[labels[0]])
        answer = f"the {ORDINALS[win]} one"
    else:
        x, y = _sample(rng, labels, 2)
        question = _pick(rng, DURATION_QUESTIONS[ask]).format(a=NOUN[x], b=NOUN[y])
        answer = f"the {NOUN[labels[win]]}"
    return _item("duration_compare", [wave], question, answer, "duration_comparison",
                 _labels(events, noise, _t(total), which=ask, answer_index=win, same_class=same))


# ----------------------------------------------------------------------------- temporal grounding

ONSET_QUESTIONS = ("When does the {x} start?", "At what time does the {x} begin?",
                   "Give the start time of the {x} in seconds.", "How many seconds into the clip does the {x} start?")
SPAN_QUESTIONS = ("From when to when does the {x} happen?", "Give the start and end time of the {x}.",
                  "When is the {x} audible? Answer as [start - end].", "Between which times does the {x} sound?")


def _grounding_scene(rng: np.random.Generator, events: tuple[int, int] = (2, 5),
                     length_s: tuple[float, float] = (10.0, 60.0)):
    """A ``length_s`` clip (s) with ``events`` (min, max) events of distinct classes, one of which is asked about."""
    labels = _sample(rng, EVENT_LABELS, int(rng.integers(events[0], events[1] + 1)))
    lengths = [_event_units(rng, lab) for lab in labels]
    total = _units(rng, *length_s) // UNITS_PER_S * UNITS_PER_S
    gap = round(MIN_GAP_S * UNITS_PER_S)
    total = max(total, _fit_total(rng, lengths, gap, round(EDGE_S * UNITS_PER_S), extra_s=(0.0, 0.0)))
    wave, events, noise = _event_scene(rng, labels, lengths, total)
    target = _pick(rng, events)
    return wave, events, noise, total, target


def _onset_item(rng: np.random.Generator, name: str, scene) -> Item:
    """When does the X start? -> "12.4s", on a ``_grounding_scene``."""
    wave, events, noise, total, target = scene
    question = _pick(rng, ONSET_QUESTIONS).format(x=NOUN[target["label"]])
    return _item(name, [wave], question, _fmt(target["onset_s"]), "event_onset",
                 _labels(events, noise, _t(total), target=target["label"], onset_s=target["onset_s"],
                         offset_s=target["offset_s"]))


@family("event_onset", skill="temporal")
def event_onset(rng: np.random.Generator, index: int) -> Item:
    """When does the X start? -> "12.4s"."""
    return _onset_item(rng, "event_onset", _grounding_scene(rng))


DENSE_EVENTS = (6, 8)  # events per event_onset_dense clip (of the eight classes, each at most once)


@family("event_onset_dense", skill="temporal")
def event_onset_dense(rng: np.random.Generator, index: int) -> Item:
    """event_onset on the same 10-60-s clips with 6-8 events instead of 2-5: asked every event in turn
    (``ask_every_onset``), one encoding teaches ~7 onset answers instead of ~3.5. On the nano model the
    audio is what a long clip costs, so answers per second of encoded audio double."""
    return _onset_item(rng, "event_onset_dense", _grounding_scene(rng, events=DENSE_EVENTS))


def ask_every_onset(row: dict, rng) -> dict:
    """An ``event_onset`` manifest row turned into one conversation asking the onset of each of its
    events in turn (random order), task ``event_onset_all`` and family ``<family>_all`` (``event_onset_all``
    for ``event_onset`` rows), ``labels.asked`` listing the asked events in answer order. The same clip
    then teaches one answer per event for one encoding: on the nano model a 10-60-s clip costs ~15x a
    short transcription sample, the questions almost nothing.
    ``rng``: a ``random.Random``."""
    events = [e for e in (row.get("labels") or {}).get("events") or [] if e.get("label") in NOUN]
    if row.get("task") != "event_onset" or not events:
        raise ValueError(f"{row.get('id')}: not an event_onset row with labelled events")
    events = list(events)
    rng.shuffle(events)
    conversations = []
    for k, e in enumerate(events):
        question = rng.choice(ONSET_QUESTIONS).format(x=NOUN[e["label"]])
        conversations += [{"from": "human", "value": ("<sound>\n" if k == 0 else "") + question},
                          {"from": "gpt", "value": _fmt(e["onset_s"])}]
    labels = dict(row["labels"], asked=[{"label": e["label"], "onset_s": e["onset_s"]} for e in events])
    return dict(row, id=f"{row['id']}/all", family=f"{row.get('family', 'event_onset')}_all", task="event_onset_all",
                conversations=conversations, labels=labels)


SHORT_ONSET_S = (5.0, 15.0)  # seconds: clip length of event_onset_short


@family("event_onset_short", skill="temporal")
def event_onset_short(rng: np.random.Generator, index: int) -> Item:
    """event_onset on 5-15 s clips with 2-3 events, same questions and answer format: a first lesson
    in finding an event among a few hundred audio tokens rather than 1,500, at a sixth of the cost."""
    return _onset_item(rng, "event_onset_short", _grounding_scene(rng, events=(2, 3), length_s=SHORT_ONSET_S))


@family("event_span", skill="temporal")
def event_span(rng: np.random.Generator, index: int) -> Item:
    """From when to when does the X happen? -> "[12.4s - 15.0s]"."""
    wave, events, noise, total, target = _grounding_scene(rng)
    question = _pick(rng, SPAN_QUESTIONS).format(x=NOUN[target["label"]])
    answer = f"[{_fmt(target['onset_s'])} - {_fmt(target['offset_s'])}]"
    return _item("event_span", [wave], question, answer, "event_span",
                 _labels(events, noise, _t(total), target=target["label"], onset_s=target["onset_s"],
                         offset_s=target["offset_s"]))


LONG_QUESTIONS = {
    "mmss": ("At what time does the {x} start? Answer in m:ss.", "When does the {x} begin? Give the time as m:ss.",
             "Find the moment the {x} starts (m:ss)."),
    "seconds": ("How many seconds into the recording does the {x} start?",
                "When does the {x} start? Answer in seconds.", "Give the onset of the {x} in seconds."),
}


@contextlib.contextmanager
def long_durations(lo_s: float, hi_s: float):
    """Temporarily set the length range of long clips (tests use short "long" clips). The family draws
    its length as a fraction of the range, so every other random draw stays the same."""
    global LONG_DURATION_S
    if not 0 < lo_s <= hi_s:
        raise ValueError(f"need 0 < lo_s <= hi_s, got {lo_s}, {hi_s}")
    old, LONG_DURATION_S = LONG_DURATION_S, (float(lo_s), float(hi_s))
    try:
        yield
    finally:
        LONG_DURATION_S = old


@family("long_event_grounding", skill="temporal", long=True)
def long_event_grounding(rng: np.random.Generator, index: int) -> Item:
    """10-30 min of quiet noise with 3-8 sparse events of distinct classes; when does one start?

    Onsets sit on whole seconds, so both answer styles ("12:07" and "727.0s") are exact. Cheap: the
    cost is one noise synthesis and one FLAC encode of the clip (a few seconds for 30 minutes).
    """
    lo, hi = LONG_DURATION_S
    total_s = float(math.floor(lo + float(rng.random()) * (hi - lo)))
    total_s = max(total_s, lo)
    n_events = int(rng.integers(3, 9))
    labels = _sample(rng, EVENT_LABELS, n_events)
    lengths = [_units(rng, 1.0, 4.0) for _ in labels]  # units of GRID_S
    per_s = round(1 / LONG_GRID_S)
    # Lay out on the 1-s grid with each event's slot rounded up to whole seconds.
    slots = [math.ceil(n / UNITS_PER_S) for n in lengths]
    gap = round(LONG_MIN_GAP_S * per_s)
    edge = round(LONG_EDGE_S * per_s)
    total_units = int(total_s * per_s)
    if total_units - 2 * edge - sum(slots) - gap * (len(slots) - 1) < 0:  # only for tiny test ranges
        gap = 1
        edge = 1
    onsets = _layout(rng, slots, total_units, gap, edge)
    noise = _noise(rng, LONG_SNR_DB)
    placed = [(lab, S.event_sound(lab, rng, _t(n)), float(on * LONG_GRID_S), 0.0, {})
              for lab, n, on in zip(labels, lengths, onsets)]
    wave, events = _render(rng, total_s, placed, noise)
    target = _pick(rng, events)
    style = _pick(rng, ("mmss", "seconds"))
    question = _pick(rng, LONG_QUESTIONS[style]).format(x=NOUN[target["label"]])
    answer = _mmss(target["onset_s"]) if style == "mmss" else _fmt(target["onset_s"])
    return _item("long_event_grounding", [wave], question, answer, "long_event_grounding",
                 _labels(events, noise, total_s, target=target["label"], onset_s=target["onset_s"],
                         offset_s=target["offset_s"], answer_format=style))


# ----------------------------------------------------------------------------- music

TEMPO_QUESTIONS = ("What is the tempo of this rhythm in beats per minute?", "Estimate the BPM of the beat.",
                   "How fast is the beat, in BPM?", "What is the tempo (BPM) of this pattern?")


def _music_scene(rng: np.random.Generator, audio: np.ndarray, label: str, snr=MUSIC_SNR_DB, **meta):
    """Place one music sound after a short lead-in (0.2-1.0 s) with a tail, in noise."""
    lead = _units(rng, 0.2, 1.0)
    n = math.ceil(audio.size / (SAMPLE_RATE * GRID_S))
    total = lead + n + _units(rng, 0.2, 1.0)
    noise = _noise(rng, snr)
    wave, events = _render(rng, _t(total), [(label, audio, _t(lead), 0.0, meta)], noise)
    return wave, events, noise, _t(total), _t(lead)


def _tempo_item(rng: np.random.Generator):
    bpm = int(rng.integers(TEMPO_BPM[0], TEMPO_BPM[1] + 1))
    beats = max(4, math.ceil(bpm / 60 * rng.uniform(5.0, 10.0)))
    pattern, timbre = _pick(rng, RHYTHM_PATTERNS), _pick(rng, RHYTHM_TIMBRES)
    r = S.rhythm(bpm, beats, pattern, timbre, rng=rng, pitch_midi=int(rng.integers(60, 80)))
    wave, events, noise, total_s, lead = _music_scene(rng, r.audio, "rhythm", (15.0, 35.0))
    beats_s = [round(lead + float(b), 6) for b in r.beat_onsets_s]
    return wave, bpm, _labels(events, noise, total_s, bpm=bpm, beats=beats, pattern=pattern, timbre=timbre,
                              beat_onsets_s=beats_s)


def tempo_distractors(rng: np.random.Generator, bpm: int, k: int = 3) -> list[int]:
    """``k`` BPM values that differ from ``bpm`` and from each other by >= ``TEMPO_MIN_RATIO``.

    Candidates lie on a ladder of ratios 1.2 apart (both directions), so enough of them always exist.
    """
    ladder = [round(bpm * 1.2 ** j) for j in (-3, -2, -1, 1, 2, 3)]
    cands = [c for c in ladder if 30 <= c <= 300]
    chosen: list[int] = []
    for i in rng.permutation(len(cands)):
        c = cands[i]
        if all(max(c, o) / min(c, o) >= TEMPO_MIN_RATIO for o in [bpm, *chosen]):
            chosen.append(c)
        if len(chosen) == k:
            return chosen
    raise AssertionError(f"no {k} tempo distractors for {bpm} BPM")  # the ladder makes this impossible


@family("music_tempo", skill="music")
def music_tempo(rng: np.random.Generator, index: int) -> Item:
    """A rhythm (every beat hit) at an integer 60-180 BPM; answer "<n> BPM"."""
    wave, bpm, labels = _tempo_item(rng)
    return _item("music_tempo", [wave], _pick(rng, TEMPO_QUESTIONS), f"{bpm} BPM", "tempo", labels)


@family("music_tempo_mc", skill="music", multiple_choice=True)
def music_tempo_mc(rng: np.random.Generator, index: int) -> Item:
    """The tempo task as MC: four BPM choices pairwise >= 15 % apart."""
    wave, bpm, labels = _tempo_item(rng)
    others = tempo_distractors(rng, bpm)
    closest = min(max(bpm, o) / min(bpm, o) for o in others)
    difficulty = "hard" if closest < 1.25 else "medium" if closest < 1.5 else "easy"
    return _mc_item(rng, "music_tempo_mc", wave, _pick(rng, TEMPO_QUESTIONS), f"{bpm} BPM",
                    [f"{o} BPM" for o in others], "tempo", labels, category="Information Extraction",
                    sub_category="Rhythm and Tempo Understanding", domain="music", difficulty=difficulty)


PITCH_QUESTIONS = ("What note is being played? Answer with a note name like A4.",
                   "Name the pitch of this note (e.g. C#5).", "Which note do you hear, with its octave?",
                   "What is the pitch of this tone as a note name?")
PITCH_MC_QUESTIONS = ("What note is being played?", "Which note do you hear?", "What is the pitch of this tone?")


def _pitch_item(rng: np.random.Generator):
    midi = int(rng.integers(PITCH_MIDI[0], PITCH_MIDI[1] + 1))
    timbre = _pick(rng, tuple(S.TIMBRES))
    dur = _t(_units(rng, 0.5, 2.0))
    audio = S.note(midi, dur, timbre, rng=rng)
    name = S.midi_to_name(midi)
    wave, events, noise, total_s, _ = _music_scene(rng, audio, "note", midi=midi, note=name, timbre=timbre)
    return wave, midi, name, _labels(events, noise, total_s, midi=midi, note=name, timbre=timbre,
                                     f0_hz=round(S.midi_to_hz(midi), 3))


@family("music_pitch", skill="music")
def music_pitch(rng: np.random.Generator, index: int) -> Item:
    """One note (C3-C6) in one of six timbres; answer its name with octave, e.g. "A4"."""
    wave, midi, name, labels = _pitch_item(rng)
    return _item("music_pitch", [wave], _pick(rng, PITCH_QUESTIONS), name, "pitch", labels)


@family("music_pitch_mc", skill="music", multiple_choice=True)
def music_pitch_mc(rng: np.random.Generator, index: int) -> Item:
    """The pitch task as MC: distractors 1-12 semitones away (octave errors included)."""
    wave, midi, name, labels = _pitch_item(rng)
    offsets = _sample(rng, [-12, -7, -5, -3, -2, -1, 1, 2, 3, 5, 7, 12], 3)
    distractors = [S.midi_to_name(midi + o) for o in offsets]
    nearest = min(abs(o) for o in offsets)
    difficulty = "hard" if nearest == 1 or 12 in map(abs, offsets) else "medium" if nearest < 5 else "easy"
    return _mc_item(rng, "music_pitch_mc", wave, _pick(rng, PITCH_MC_QUESTIONS), name,
                    distractors, "pitch", labels, category="Information Extraction",
                    sub_category="Melodic Structure Interpretation", domain="music", difficulty=difficulty)


TIMBRE_QUESTIONS = ("Which instrument timbre is playing?", "What kind of sound source plays these notes?",
                    "Which timbre best describes this sound?", "What instrument do you hear?")


@family("music_timbre", skill="music", multiple_choice=True)
def music_timbre(rng: np.random.Generator, index: int) -> Item:
    """A single note or a short melody in one of the six timbres; MC over four timbre names."""
    timbre = _pick(rng, tuple(S.TIMBRES))
    if rng.integers(2):
        mel = S.melody_in_key(_pick(rng, tuple(MAJOR_KEYS.values())), "major", int(rng.integers(3, 7)),
                              float(rng.integers(90, 150)), timbre, rng)
        audio, notes = mel.audio, [n.name for n in mel.notes]
    else:
        midi = int(rng.integers(55, 80))
        audio, notes = S.note(midi, _t(_units(rng, 0.8, 2.0)), timbre, rng=rng), [S.midi_to_name(midi)]
    wave, events, noise, total_s, _ = _music_scene(rng, audio, "music", timbre=timbre)
    distractors = _sample(rng, [TIMBRE_NAMES[t] for t in TIMBRE_NAMES if t != timbre], 3)
    return _mc_item(rng, "music_timbre", wave, _pick(rng, TIMBRE_QUESTIONS), TIMBRE_NAMES[timbre], distractors,
                    "timbre", _labels(events, noise, total_s, timbre=timbre, notes=notes),
                    category="Information Extraction", sub_category="Instrumentation", domain="music",
                    difficulty=_difficulty(noise[1]))


KEY_QUESTIONS = ("What key is this melody in?", "In which key and mode is this tune?",
                 "Identify the key of the melody.", "What is the tonal center and mode of this melody?")


def key_name(pitch_class: int, mode: str) -> str:
    return f"{KEY_NAMES[mode][pitch_class % 12]} {mode}"


@family("music_key", skill="music", multiple_choice=True)
def music_key(rng: np.random.Generator, index: int) -> Item:
    """A melody (starting and ending on the tonic) in a major or natural-minor key; MC over keys.

    Distractors: the relative key (same notes, other tonic), the parallel key (same tonic, other
    mode) and one other random key, so the choice needs both tonic and mode.
    """
    mode = _pick(rng, ("major", "minor"))
    pc = int(rng.integers(12))
    tonic = KEY_NAMES[mode][pc]
    n_notes = int(rng.integers(8, 17))
    timbre = _pick(rng, ("sine", "square", "sawtooth", "pluck", "organ"))
    octave = 4 if pc < 7 else 3  # keep every note of a tenth above the tonic below ~1 kHz
    mel = S.melody_in_key(tonic, mode, n_notes, float(rng.integers(80, 161)), timbre, rng, octave=octave)
    wave, events, noise, total_s, lead = _music_scene(rng, mel.audio, "melody", timbre=timbre)
    answer = key_name(pc, mode)
    other = "minor" if mode == "major" else "major"
    relative = key_name(pc - 3 if mode == "major" else pc + 3, other)
    parallel = key_name(pc, other)
    rest = [key_name(p, m) for p in range(12) for m in ("major", "minor")]
    rest = [k for k in rest if k not in (answer, relative, parallel)]
    distractors = [relative, parallel, _pick(rng, rest)]
    notes = [{"note": n.name, "onset_s": round(lead + n.onset_s, 6), "offset_s": round(lead + n.offset_s, 6)}
             for n in mel.notes]
    return _mc_item(rng, "music_key", wave, _pick(rng, KEY_QUESTIONS), answer, distractors, "key",
                    _labels(events, noise, total_s, key=tonic, mode=mode, timbre=timbre, notes=notes),
                    category="Reasoning", sub_category="Melodic Structure Interpretation", domain="music",
                    difficulty="medium" if n_notes >= 12 else "hard")


CHORD_QUESTIONS = ("Is this chord major or minor?", "What is the quality of this chord?",
                   "Does this chord sound major or minor?", "Identify the chord quality.")


@family("chord_quality", skill="music", multiple_choice=True)
def chord_quality(rng: np.random.Generator, index: int) -> Item:
    """A root-position triad, block or arpeggiated then held; MC major vs minor."""
    quality = _pick(rng, ("major", "minor"))
    root = int(rng.integers(CHORD_ROOT_MIDI[0], CHORD_ROOT_MIDI[1] + 1))
    timbre = _pick(rng, ("sine", "square", "sawtooth", "pluck", "organ"))
    dur = _t(_units(rng, 1.0, 3.0))
    arpeggio = bool(rng.integers(2))
    if arpeggio:  # each note enters 0.25 s after the previous and all ring to the end
        step = round(0.25 * SAMPLE_RATE)
        midis = S.chord_notes(root, quality)
        n = S.n_samples(dur) + step * (len(midis) - 1)
        audio = np.zeros(n, dtype=np.float32)
        for i, m in enumerate(midis):
            x = S.note(m, (n - i * step) / SAMPLE_RATE, timbre, rng=rng)
            audio[i * step: i * step + x.size] += x
        audio = S.normalize(audio)
    else:
        audio = S.chord(root, quality, dur, timbre, rng=rng)
    wave, events, noise, total_s, _ = _music_scene(rng, audio, "chord", timbre=timbre)
    names = [S.midi_to_name(m) for m in S.chord_notes(root, quality)]
    return _mc_item(rng, "chord_quality", wave, _pick(rng, CHORD_QUESTIONS), quality,
                    ["minor" if quality == "major" else "major"], "chord_quality",
                    _labels(events, noise, total_s, root=S.midi_to_name(root), quality=quality, notes=names,
                            timbre=timbre, arpeggiated=arpeggio),
                    category="Information Extraction", sub_category="Harmony and Chord Progressions",
                    domain="music", difficulty="easy" if timbre in ("sine", "organ") else "medium")


# ----------------------------------------------------------------------------- multi-audio

MULTI_CONTAINS = {
    "index": ("Which clip contains a {x}? Answer with the clip number.", "In which clip do you hear a {x}?"),
    "ordinal": ("Which of the clips contains a {x}: the first, the second or the third?",
                "Is the {x} in the first, the second or the third clip?"),
}
MULTI_LENGTH = {
    "index": ("Which clip is {w}? Answer with the clip number.", "Which of the clips is {w}?"),
    "ordinal": ("Which clip is {w}: the first, the second or the third?",
                "Is the first, the second or the third clip {w}?"),
}


@family("multi_audio_compare", skill="multi")
def multi_audio_compare(rng: np.random.Generator, index: int) -> Item:
    """2-3 clips in one prompt (<sound-1>, <sound-2>, ...): which one contains a class, or is longer.

    The answer names the clip the way the question does: "clip 2" for numbered questions, "the
    second clip" for ordinal ones.
    """
    n = int(rng.integers(2, 4))
    kind = _pick(rng, ("contains", "length"))
    style = _pick(rng, ("index", "ordinal"))
    labels = _sample(rng, EVENT_LABELS, n)
    if kind == "contains":
        totals = [_units(rng, 2.0, 5.0) // UNITS_PER_S * UNITS_PER_S for _ in range(n)]
    else:  # clip lengths (whole seconds) at least 30 % apart: 2, 3, 4, 6, 8 s ladders
        secs = _sample(rng, [2, 3, 4, 6, 8, 11], n)
        totals = [s * UNITS_PER_S for s in secs]
    waves, clips = [], []
    for lab, total in zip(labels, totals):
        length = _event_units(rng, lab, cap_s=total / UNITS_PER_S - 2 * EDGE_S)
        wave, events, noise = _event_scene(rng, [lab], [length], total)
        waves.append(wave)
        clips.append({"events": events, "noise": noise[0], "snr_db": noise[1], "duration_s": _t(total)})
    if kind == "contains":
        win = int(rng.integers(n))
        question = _pick(rng, MULTI_CONTAINS[style]).format(x=NOUN[labels[win]])
        extra = {"target": labels[win]}
    else:
        which = _pick(rng, ("longer", "shorter") if n == 2 else ("the longest", "the shortest"))
        pick = max if which in ("longer", "the longest") else min
        win = totals.index(pick(totals))
        question = _pick(rng, MULTI_LENGTH[style]).format(w=which)
        extra = {"which": which}
    if n == 2:
        question = question.replace(", the second or the third", " or the second").replace(
            "the first, the second or the third", "the first or the second")
    answer = f"clip {win + 1}" if style == "index" else f"the {ORDINALS[win]} clip"
    return _item("multi_audio_compare", waves, question, answer, "multi_audio_comparison",
                 {"clips": clips, "kind": kind, "answer_index": win + 1, "answer_style": style, **extra})


# ----------------------------------------------------------------------------- dense captions

CAPTION_QUESTIONS = ("Describe the audio in detail, with timestamps for every sound.",
                     "Write a detailed, time-stamped caption of this recording.",
                     "List everything you hear, in order, with start and end times.",
                     "Give a dense caption of the clip: each sound with its time span.")


def _noise_words(color: str, snr_db: float) -> str:
    level = "faint" if snr_db >= 25 else "quiet" if snr_db >= 15 else "noticeable"
    return f"{level} {color} background noise"


def _caption_line(e: dict) -> str:
    if e["label"] == "speech":
        who = "a man" if e.get("gender") == "male" else "a woman"
        what = f'{who} says "{e["transcript"]}"'
    else:
        what = CAPTION[e["label"]]
    return f"{_fmt(e['onset_s'])}-{_fmt(e['offset_s'])}: {what}."


SPEECH_FRAME_S = 0.005  # seconds per frame when finding where speech starts
SPEECH_START_DB = -20.0  # dB re the loudest frame: the first frame this loud is the speech onset


def _speech_onset_trim(x: np.ndarray) -> np.ndarray:
    """Drop the silent lead-in ``tts.speak`` keeps (its 50-ms margin and any near-silent breath) so the
    event's labelled onset is where the voice becomes audible, not where the clip happens to start."""
    hop = round(SPEECH_FRAME_S * SAMPLE_RATE)
    n = x.size // hop
    energy = np.square(x[: n * hop].reshape(n, hop), dtype=np.float64).mean(axis=1)
    first = int(np.argmax(energy >= energy.max() * 10 ** (SPEECH_START_DB / 10)))
    return np.ascontiguousarray(x[first * hop:])


@family("dense_caption", skill="caption")
def dense_caption(rng: np.random.Generator, index: int) -> Item:
    """A 20-60 s scene with 3-8 events (classes may repeat), half the time one spoken phrase (espeak);
    the answer is a caption listing the background and then every event in order with its span."""
    from afnext.data import tts  # espeak is loaded only by the families that speak

    labels = [_pick(rng, EVENT_LABELS) for _ in range(int(rng.integers(3, 9)))]
    audios = [S.event_sound(lab, rng, _t(_event_units(rng, lab))) for lab in labels]
    metas: list[dict] = [{} for _ in labels]
    if rng.integers(2):
        text = _pick(rng, SPEECH_PHRASES)
        voice = _pick(rng, tts.voices("en"))
        speech = _speech_onset_trim(tts.speak(text, voice, rate_wpm=int(rng.integers(140, 190))))
        pad = -speech.size % round(GRID_S * SAMPLE_RATE)  # end on the grid: exact written offsets
        speech = np.concatenate([speech, np.zeros(pad, dtype=np.float32)])
        pos = int(rng.integers(len(labels) + 1))
        labels.insert(pos, "speech")
        audios.insert(pos, speech)
        metas.insert(pos, {"transcript": text, "speaker": voice.id, "gender": voice.gender})
    lengths = [round(a.size / (GRID_S * SAMPLE_RATE)) for a in audios]
    gap, edge = round(MIN_GAP_S * UNITS_PER_S), round(EDGE_S * UNITS_PER_S)
    total = max(_units(rng, 20.0, 60.0) // UNITS_PER_S * UNITS_PER_S,
                _fit_total(rng, lengths, gap, edge, extra_s=(0.0, 0.0)))
    onsets = _layout(rng, lengths, total, gap, edge)
    noise = _noise(rng, labels=labels)
    placed = [(lab, a, _t(on), 0.0, m) for lab, a, on, m in zip(labels, audios, onsets, metas)]
    wave, events = _render(rng, _t(total), placed, noise)
    lines = [f"{_fmt(0.0)}-{_fmt(_t(total))}: {_noise_words(*noise)}."] + [_caption_line(e) for e in events]
    return _item("dense_caption", [wave], _pick(rng, CAPTION_QUESTIONS), " ".join(lines), "dense_caption",
                 _labels(events, noise, _t(total)))


# ----------------------------------------------------------------------------- temporal reasoning

GAP_QUESTIONS = ("How much time passes between the start of the {a} and the start of the {b}?",
                 "How many seconds after the {a} starts does the {b} start?",
                 "What is the time between the onsets of the {a} and the {b}?")
AFTER_QUESTIONS = ("Which event happens right after the {nth} {x}?", "What do you hear next after the {nth} {x}?",
                   "Which sound follows the {nth} {x}?")
BEFORE_QUESTIONS = ("How many sounds do you hear before the {x} starts?",
                    "How many events occur before the {x}?", "Before the {x} begins, how many sounds are there?")
LENGTH_QUESTIONS = ("How long does the {x} last?", "For how many seconds is the {x} heard?",
                    "What is the duration of the {x}?")


def _units_of(seconds: float) -> int:
    return round(seconds * UNITS_PER_S)


def _d(units: int) -> str:
    """A grid-unit difference written with one decimal, computed in integers (no 5.6000001)."""
    return f"{units / UNITS_PER_S:.1f}"


@family("think_temporal", skill="reasoning")
def think_temporal(rng: np.random.Generator, index: int) -> Item:
    """Two-step temporal questions answered with <think> steps anchored to timestamps, then the answer.

    Kinds: gap between two onsets; which event follows the n-th occurrence of a repeated sound; how many
    events precede one; how long one lasts. Every number in the reasoning is a label (one decimal) and
    every difference is computed in grid units, so the trace is exact arithmetic on exact times.
    """
    kind = _pick(rng, ("gap", "after", "before", "length"))
    if kind == "after":
        rep = _pick(rng, COUNTABLE)
        reps = int(rng.integers(2, 4))
        others = _sample(rng, [x for x in EVENT_LABELS if x != rep], int(rng.integers(2, 4)))
        nth = int(rng.integers(1, reps + 1))
        # Order: the n-th repeat is directly followed by a distinct sound; the rest is shuffled around.
        seq = [rep] * reps + others
        while True:
            seq = [seq[i] for i in rng.permutation(len(seq))]
            pos = [i for i, x in enumerate(seq) if x == rep][nth - 1]
            if pos + 1 < len(seq) and seq[pos + 1] != rep:
                break
        labels = seq
    else:
        labels = _sample(rng, EVENT_LABELS, int(rng.integers(3, 6)))
    lengths = [_event_units(rng, lab, cap_s=2.0) for lab in labels]
    gap, edge = round(MIN_GAP_S * UNITS_PER_S), round(EDGE_S * UNITS_PER_S)
    total = max(_units(rng, 12.0, 40.0) // UNITS_PER_S * UNITS_PER_S,
                _fit_total(rng, lengths, gap, edge, extra_s=(0.0, 0.0)))
    wave, events, noise = _event_scene(rng, labels, lengths, total)

    def on(e):
        return _fmt(e["onset_s"])

    if kind == "gap":
        i, j = sorted(_sample(rng, list(range(len(events))), 2))
        a, b = events[i], events[j]
        diff = _units_of(b["onset_s"]) - _units_of(a["onset_s"])
        question = _pick(rng, GAP_QUESTIONS).format(a=NOUN[a["label"]], b=NOUN[b["label"]])
        steps = [f"The {NOUN[a['label']]} starts at {on(a)}.", f"The {NOUN[b['label']]} starts at {on(b)}.",
                 f"{on(b)} - {on(a)} = {_d(diff)}s."]
        answer = f"{_d(diff)} seconds"
        extra = {"asked": [a["label"], b["label"]], "value_s": diff / UNITS_PER_S}
    elif kind == "after":
        idx = [k for k, e in enumerate(events) if e["label"] == rep]
        target = events[idx[nth - 1]]
        nxt = events[idx[nth - 1] + 1]
        question = _pick(rng, AFTER_QUESTIONS).format(nth=ORDINALS[nth - 1], x=NOUN[rep])
        times = [on(events[k]) for k in idx]
        listed = times[0] if len(times) == 1 else ", ".join(times[:-1]) + f" and {times[-1]}"
        steps = [f"The {NOUN[rep]} sounds start at {listed}.",
                 f"The {ORDINALS[nth - 1]} {NOUN[rep]} starts at {on(target)} and ends at {_fmt(target['offset_s'])}.",
                 f"The next sound to start is the {NOUN[nxt['label']]}, at {on(nxt)}."]
        answer = f"the {NOUN[nxt['label']]}"
        extra = {"repeated": rep, "nth": nth, "answer_label": nxt["label"]}
    elif kind == "before":
        k = int(rng.integers(len(events)))
        target = events[k]
        before = events[:k]
        question = _pick(rng, BEFORE_QUESTIONS).format(x=NOUN[target["label"]])
        steps = [f"The {NOUN[target['label']]} starts at {on(target)}."]
        if before:
            steps.append("Before it: " + ", ".join(f"the {NOUN[e['label']]} at {on(e)}" for e in before) + ".")
        else:
            steps.append("No other sound starts before it.")
        steps.append(f"That makes {len(before)}.")
        answer = str(len(before))
        extra = {"asked": target["label"], "value": len(before)}
    else:
        target = _pick(rng, events)
        diff = _units_of(target["offset_s"]) - _units_of(target["onset_s"])
        question = _pick(rng, LENGTH_QUESTIONS).format(x=NOUN[target["label"]])
        steps = [f"The {NOUN[target['label']]} starts at {on(target)}.",
                 f"It ends at {_fmt(target['offset_s'])}.",
                 f"{_fmt(target['offset_s'])} - {on(target)} = {_d(diff)}s."]
        answer = f"{_d(diff)} seconds"
        extra = {"asked": target["label"], "value_s": diff / UNITS_PER_S}
    reasoning = "<think>\n" + " ".join(steps) + "\n</think>\n" + answer
    return _item("think_temporal", [wave], question, reasoning, "temporal_reasoning",
                 _labels(events, noise, _t(total), kind=kind, answer=answer, steps=steps, **extra))


# ----------------------------------------------------------------------------- vocabulary


def vocabulary() -> list[str]:
    """Words and phrases these families write, for tokenizer training (names that are rare in a small
    corpus, like every note name and key, are listed so that they still get merges)."""
    words = list(NOUN.values()) + list(CAPTION.values()) + list(TIMBRE_NAMES.values())
    words += [S.midi_to_name(m) for m in range(36, 97)]
    words += [key_name(p, m) for p in range(12) for m in ("major", "minor")]
    words += [f"{b} BPM" for b in range(30, 301)] + list(NUMBER_WORDS) + list(ORDINALS) + list(SPEECH_PHRASES)
    words += [f"{c} background noise" for c in NOISE_COLORS]
    for group in (CLASS_QUESTIONS, COUNT_QUESTIONS, ONSET_QUESTIONS, SPAN_QUESTIONS, TEMPO_QUESTIONS,
                  PITCH_QUESTIONS, PITCH_MC_QUESTIONS, TIMBRE_QUESTIONS, KEY_QUESTIONS, CHORD_QUESTIONS,
                  CAPTION_QUESTIONS,
                  GAP_QUESTIONS, AFTER_QUESTIONS, BEFORE_QUESTIONS, LENGTH_QUESTIONS, MC_INSTRUCTIONS):
        words += list(group)
    return words


VOCABULARY = vocabulary()
