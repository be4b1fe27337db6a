"""Sound, music, temporal, multi-audio, caption and reasoning families: labels re-measured from the waveform.

The checks share no code with the generator: events are found by a spectrally whitened energy detector
(robust to white, pink and brown backgrounds) with per-event backtracking to the onset, tempo by the
intervals between detected hits, pitch and chord quality by FFT peaks, loudness by RMS over the labelled
spans. Every MC item must hold its answer exactly once among its choices.
"""

from __future__ import annotations

import ctypes
import glob
import math
import os
import re

import numpy as np
import pytest

from afnext.data import sounds as S
from afnext.data.families import FAMILIES, item_seed
from afnext.data.families import sound as fs
from afnext.think import split_reasoning

SR = 16_000
N_ITEMS = 8  # items per family and check; the labels are exact, so a few random items catch a bug


@pytest.fixture(scope="module", autouse=True)
def single_thread_blas():
    """numpy's OpenBLAS spins up threads for every dot product, which on small machines makes the power
    sums of ``Scene.render`` ~1000x slower; the generator's workers run single-threaded, so do we here."""
    import numpy

    libs = glob.glob(os.path.join(os.path.dirname(numpy.__file__), os.pardir, "numpy.libs", "libscipy_openblas*.so"))
    lib = ctypes.CDLL(libs[0]) if libs else None
    get = getattr(lib, "scipy_openblas_get_num_threads64_", None)
    set_ = getattr(lib, "scipy_openblas_set_num_threads64_", None)
    if get is None or set_ is None:
        yield
        return
    before = get()
    set_(1)
    yield
    set_(before)


def make(name: str, i: int, seed: int = 7):
    return FAMILIES[name].fn(item_seed(seed, "test", name, i), i)


# ----------------------------------------------------------------------------- independent measurements

WIN, HOP = 256, 32  # 16-ms Hann frames every 2 ms


def _ratios(x: np.ndarray) -> np.ndarray:
    """Per frame and bin: power over that bin's noise floor (10th percentile over the clip), i.e. a
    spectrogram whitened by the background, whatever its colour."""
    x = np.asarray(x, np.float64)
    n = (len(x) - WIN) // HOP + 1
    idx = np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(WIN), axis=1)) ** 2
    return spec / (np.percentile(spec, 10, axis=0) + 1e-20)


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    e = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    return list(zip(e[::2], e[1::2]))


def detect_events(x, *, above_db=6.0, back_db=1.5, merge_gap_s=0.35, min_len_s=0.03, profile_s=0.05, smooth=1):
    """[(onset_s, offset_s)] of the sounds standing out of the background.

    Segments: frames whose whitened power (mean over bins) is ``above_db`` over its typical level,
    merged across gaps shorter than ``merge_gap_s`` (clicks, knocks and alarm pulses are one event).
    Onsets: from each segment's start, step back while the power in the bins that this sound occupies
    (profile over its first ``profile_s``) stays ``back_db`` above their quiet level; the onset is the
    end of the first frame that contains the sound. Offsets are coarse (decaying tails fade early).
    """
    r = _ratios(x)
    score = 10 * np.log10(r.mean(axis=1))
    segs: list[list[int]] = []
    for a, b in _runs(score > np.percentile(score, 10) + above_db):
        if segs and (a - segs[-1][1]) * HOP < merge_gap_s * SR:
            segs[-1][1] = b
        else:
            segs.append([a, b])
    segs = [s for s in segs if (s[1] - s[0]) * HOP >= min_len_s * SR]
    reach = round(0.3 * SR / HOP)
    quiet = np.ones(len(score), bool)
    for a, b in segs:
        quiet[max(0, a - reach):b] = False
    out = []
    for a, b in segs:
        i, lo = a, max(0, a - reach)
        for _ in range(3):  # re-profile at the new start: sweeping sounds change band over time
            profile = r[i:min(b, i + max(1, round(profile_s * SR / HOP)))].mean(axis=0)
            bins = profile > 10
            band = 10 * np.log10(r[:, bins].mean(axis=1)) if bins.any() else score
            if smooth > 1:
                band = np.convolve(band, np.ones(smooth) / smooth, mode="same")
            threshold = np.median(band[quiet]) + back_db
            j = i
            while j > lo and band[j - 1] > threshold:
                j -= 1
            if j == i:
                break
            i = j
        out.append(((i * HOP + WIN) / SR, (b * HOP + WIN) / SR))
    return out


def peak_hz(x) -> float:
    x = np.asarray(x, np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 8 * len(x)))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1: k + 2] + 1e-20)  # parabolic interpolation of the log peak
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / (8 * len(x))


def band_power(x, f_hz: float, rel: float = 0.015) -> float:
    x = np.asarray(x, np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spec[np.abs(f - f_hz) <= rel * f_hz].sum())


def segment(wave, e) -> np.ndarray:
    return wave[round(e["onset_s"] * SR): round(e["offset_s"] * SR)]


# ----------------------------------------------------------------------------- registry


EXPECTED = {
    "sound_class": ("sound", False, True), "sound_count": ("sound", False, False),
    "sound_order": ("temporal", False, False), "loudness_compare": ("sound", False, False),
    "duration_compare": ("temporal", False, False), "event_onset": ("temporal", False, False),
    "event_onset_short": ("temporal", False, False), "event_onset_dense": ("temporal", False, False),
    "event_span": ("temporal", False, False), "long_event_grounding": ("temporal", True, False),
    "music_tempo": ("music", False, False), "music_tempo_mc": ("music", False, True),
    "music_pitch": ("music", False, False), "music_pitch_mc": ("music", False, True),
    "music_timbre": ("music", False, True), "music_key": ("music", False, True),
    "chord_quality": ("music", False, True), "multi_audio_compare": ("multi", False, False),
    "dense_caption": ("caption", False, False), "think_temporal": ("reasoning", False, False),
}
SHORT = [n for n, (_, long_, _) in EXPECTED.items() if not long_]


def test_registered_families():
    for name, (skill, long_, mc) in EXPECTED.items():
        fam = FAMILIES[name]
        assert (fam.skill, fam.long, fam.multiple_choice) == (skill, long_, mc), name


@pytest.mark.parametrize("name", SHORT)
def test_contract_and_determinism(name):
    a, b, c = make(name, 0), make(name, 0), make(name, 1)
    assert [x.tobytes() for x in a.audios] == [x.tobytes() for x in b.audios]
    assert a.conversations == b.conversations and a.extra == b.extra
    assert a.conversations != c.conversations or a.audios[0].size != c.audios[0].size
    for it in (a, c):
        assert it.family == name and it.extra["task"] and "labels" in it.extra
        assert [t["from"] for t in it.conversations] == ["human", "gpt"]
        assert all(x.dtype == np.float32 and x.ndim == 1 and np.isfinite(x).all() for x in it.audios)
        assert max(float(np.abs(x).max()) for x in it.audios) <= S.MAX_PEAK + 1e-6
        human = it.conversations[0]["value"]
        if len(it.audios) == 1:
            assert human.startswith("<sound>\n") and human.count("<sound") == 1
        else:
            assert [int(k) for k in re.findall(r"<sound-(\d+)>", human)] == list(range(1, len(it.audios) + 1))
        labels = it.extra["labels"]
        for clip in labels.get("clips", [labels]):
            assert clip["noise"] in ("white", "pink", "brown") and isinstance(clip["snr_db"], float)


# ----------------------------------------------------------------------------- events: onsets and counts

EVENT_FAMILIES = ["sound_class", "sound_count", "sound_order", "loudness_compare", "duration_compare",
                  "event_onset", "event_onset_short", "event_onset_dense", "event_span", "think_temporal", "dense_caption", "multi_audio_compare"]


@pytest.mark.parametrize("name", EVENT_FAMILIES)
def test_event_labels_match_detected_onsets(name):
    for i in range(N_ITEMS):
        it = make(name, i)
        labels = it.extra["labels"]
        for wave, clip in zip(it.audios, labels.get("clips", [labels])):
            events = clip["events"]
            assert abs(len(wave) / SR - clip["duration_s"]) < 1e-9
            found = detect_events(wave)
            assert len(found) == len(events), (name, i, found, events)
            for (onset, _), e in zip(found, events):
                assert abs(onset - e["onset_s"]) <= 0.02, (name, i, e, onset, clip["noise"], clip["snr_db"])
            for e, nxt in zip(events, events[1:]):
                assert nxt["onset_s"] - e["offset_s"] >= fs.MIN_GAP_S - 1e-9  # no overlaps
            for e in events:  # short-clip events sit on the 0.1-s grid
                assert abs(e["onset_s"] * 10 - round(e["onset_s"] * 10)) < 1e-6


def test_sound_count_answer():
    for i in range(2 * N_ITEMS):
        it = make("sound_count", i)
        lab = it.extra["labels"]
        n = sum(e["label"] == lab["target"] for e in lab["events"])
        assert n == lab["count"] and 1 <= n <= 6
        assert it.conversations[1]["value"] in (str(n), fs.NUMBER_WORDS[n])
        assert lab["target"] in fs.COUNTABLE


def test_order_duration_loudness_answers():
    for i in range(N_ITEMS):
        it = make("sound_order", i)
        lab = it.extra["labels"]
        onset = {e["label"]: e["onset_s"] for e in lab["events"]}
        a, b = lab["asked"]
        pick = min if lab["which"] == "first" else max
        assert it.conversations[1]["value"] == f"the {fs.NOUN[pick((a, b), key=onset.get)]}"

        it = make("duration_compare", i)
        lab = it.extra["labels"]
        lengths = [e["offset_s"] - e["onset_s"] for e in lab["events"]]
        longer = int(np.argmax(lengths))
        assert max(lengths) >= 1.5 * min(lengths) - 1e-9 and max(lengths) - min(lengths) >= 0.5 - 1e-9
        want = longer if lab["which"] == "longer" else 1 - longer
        assert lab["answer_index"] == want
        ans = it.conversations[1]["value"]
        named = f"the {fs.NOUN[lab['events'][want]['label']]}"
        assert ans == (f"the {fs.ORDINALS[want]} one" if lab["same_class"] else named)

        it = make("loudness_compare", i)
        lab, wave = it.extra["labels"], it.audios[0]
        levels = [10 * np.log10(np.mean(segment(wave, e).astype(np.float64) ** 2)) for e in lab["events"]]
        gains = [e["gain_db"] for e in lab["events"]]
        assert abs(gains[0] - gains[1]) >= 6.0
        assert np.sign(levels[0] - levels[1]) == np.sign(gains[0] - gains[1])  # measured, noise included
        loud = lab["events"][int(np.argmax(gains))]["label"]
        quiet = lab["events"][int(np.argmin(gains))]["label"]
        assert it.conversations[1]["value"] == f"the {fs.NOUN[loud if lab['which'] == 'louder' else quiet]}"


def test_grounding_answers_are_the_labels():
    for i in range(N_ITEMS):
        it = make("event_onset", i)
        lab = it.extra["labels"]
        assert 10.0 <= lab["duration_s"] <= 60.0
        assert it.conversations[1]["value"] == f"{lab['onset_s']:.1f}s"
        assert [e for e in lab["events"] if e["label"] == lab["target"]][0]["onset_s"] == lab["onset_s"]
        it = make("event_onset_short", i)
        lab = it.extra["labels"]
        assert 5.0 <= lab["duration_s"] <= 15.0 and 2 <= len(lab["events"]) <= 3
        assert it.conversations[1]["value"] == f"{lab['onset_s']:.1f}s"
        assert [e for e in lab["events"] if e["label"] == lab["target"]][0]["onset_s"] == lab["onset_s"]
        assert len({e["label"] for e in lab["events"]}) == len(lab["events"])
        it = make("event_onset_dense", i)
        lab = it.extra["labels"]
        assert 10.0 <= lab["duration_s"] <= 60.0 and 6 <= len(lab["events"]) <= 8
        assert it.conversations[1]["value"] == f"{lab['onset_s']:.1f}s"
        assert len({e["label"] for e in lab["events"]}) == len(lab["events"])
        it = make("event_span", i)
        lab = it.extra["labels"]
        assert it.conversations[1]["value"] == f"[{lab['onset_s']:.1f}s - {lab['offset_s']:.1f}s]"
        assert len({e["label"] for e in lab["events"]}) == len(lab["events"])  # the asked class is unique


def test_long_event_grounding():
    with fs.long_durations(60.0, 90.0):  # the real range is 10-30 min; the layout logic is the same
        items = [make("long_event_grounding", i) for i in range(3)]
    for it in items:
        lab, wave = it.extra["labels"], it.audios[0]
        assert 60.0 <= lab["duration_s"] <= 90.0 and len(wave) == round(lab["duration_s"] * SR)
        assert 3 <= len(lab["events"]) <= 8
        for (onset, _), e in zip(detect_events(wave), lab["events"]):
            assert abs(onset - e["onset_s"]) <= 0.02 and e["onset_s"] == int(e["onset_s"])
        ans = it.conversations[1]["value"]
        t = lab["onset_s"]
        assert ans == (f"{int(t) // 60}:{int(t) % 60:02d}" if lab["answer_format"] == "mmss" else f"{t:.1f}s")
    # one real one: 10-30 min of quiet background (compresses), events far apart
    it = make("long_event_grounding", 0)
    lab, wave = it.extra["labels"], it.audios[0]
    assert 600.0 <= lab["duration_s"] <= 1800.0
    gaps = [b["onset_s"] - a["offset_s"] for a, b in zip(lab["events"], lab["events"][1:])]
    assert min(gaps) >= fs.LONG_MIN_GAP_S - 4.0
    noise = wave[: round(lab["events"][0]["onset_s"] * SR)].astype(np.float64)
    assert 10 * np.log10(np.mean(noise ** 2)) < -60.0  # dBFS


# ----------------------------------------------------------------------------- music


@pytest.mark.parametrize("name", ["music_tempo", "music_tempo_mc"])
def test_tempo_from_onset_intervals(name):
    for i in range(N_ITEMS):
        it = make(name, i)
        lab = it.extra["labels"]
        # hits are >= 333 ms apart and may be 6-ms clicks: merge only across short dips, keep short ones
        onsets = [a for a, _ in detect_events(it.audios[0], merge_gap_s=0.05, min_len_s=0.0)]
        assert len(onsets) == len(lab["beat_onsets_s"]) >= 4
        bpm = 60.0 / float(np.median(np.diff(onsets)))
        assert abs(bpm / lab["bpm"] - 1) < 0.02, (i, bpm, lab)
        assert f"{lab['bpm']} BPM" == it.conversations[1]["value"]
        for t, b in zip(onsets, lab["beat_onsets_s"]):
            assert abs(t - b) <= 0.02


@pytest.mark.parametrize("name", ["music_pitch", "music_pitch_mc"])
def test_pitch_from_fft(name):
    for i in range(N_ITEMS):
        it = make(name, i)
        lab = it.extra["labels"]
        note = segment(it.audios[0], lab["events"][0])
        f0 = peak_hz(note[: min(len(note), SR)])
        midi = round(69 + 12 * math.log2(f0 / 440.0))
        assert midi == lab["midi"] and S.midi_to_name(midi) == lab["note"] == it.conversations[1]["value"], (i, f0, lab)


def test_chord_quality_from_spectrum():
    for i in range(N_ITEMS):
        it = make("chord_quality", i)
        lab = it.extra["labels"]
        x = segment(it.audios[0], lab["events"][0])
        root = S.name_to_midi(lab["root"])
        major3, minor3 = (band_power(x, S.midi_to_hz(root + k)) for k in (4, 3))
        assert (major3 > minor3) == (lab["quality"] == "major"), (i, lab)
        assert it.conversations[1]["value"] == lab["quality"]


def test_key_labels():
    for i in range(N_ITEMS):
        it = make("music_key", i)
        lab = it.extra["labels"]
        tonic = S.key_pitch_class(lab["key"])
        scale = {(tonic + s) % 12 for s in S.MODES[lab["mode"]]}
        midis = [S.name_to_midi(n["note"]) for n in lab["notes"]]
        assert {m % 12 for m in midis} <= scale and midis[0] % 12 == midis[-1] % 12 == tonic
        assert it.extra["answer"] == f"{lab['key']} {lab['mode']}"
        # the first note, measured: the melody starts on the tonic
        first = segment(it.audios[0], lab["notes"][0])
        f0 = peak_hz(first[: min(len(first), SR // 2)])
        assert round(69 + 12 * math.log2(f0 / 440.0)) == midis[0]


# ----------------------------------------------------------------------------- multiple choice


MC_FAMILIES = [n for n, (_, _, mc) in EXPECTED.items() if mc]


@pytest.mark.parametrize("name", MC_FAMILIES)
def test_mc_fields(name):
    for i in range(2 * N_ITEMS):
        it = make(name, i)
        x = it.extra
        assert x["choices"].count(x["answer"]) == 1 and len(set(x["choices"])) == len(x["choices"])
        assert it.conversations[1]["value"] == x["answer"]
        assert x["difficulty"] in ("easy", "medium", "hard") and x["category"] and x["sub_category"]
        assert x["domain"] in ("sound", "music") and x["question"] in it.conversations[0]["value"]
        for k, c in enumerate(x["choices"]):
            assert f"({'ABCD'[k]}) {c}" in it.conversations[0]["value"]
        if name == "music_tempo_mc":
            bpms = sorted(int(c.split()[0]) for c in x["choices"])
            assert all(b / a >= 1.15 for a, b in zip(bpms, bpms[1:]))


def test_tempo_distractors_always_exist():
    rng = np.random.default_rng(0)
    for bpm in range(fs.TEMPO_BPM[0], fs.TEMPO_BPM[1] + 1):
        vals = sorted([bpm, *fs.tempo_distractors(rng, bpm)])
        assert len(vals) == 4 and all(b / a >= fs.TEMPO_MIN_RATIO for a, b in zip(vals, vals[1:]))


# ----------------------------------------------------------------------------- multi-audio, captions, reasoning


def test_multi_audio_answers():
    for i in range(2 * N_ITEMS):
        it = make("multi_audio_compare", i)
        lab = it.extra["labels"]
        assert 2 <= len(it.audios) == len(lab["clips"]) <= 3
        k = lab["answer_index"]
        if lab["kind"] == "contains":
            assert [c["events"][0]["label"] for c in lab["clips"]].count(lab["target"]) == 1
            assert lab["clips"][k - 1]["events"][0]["label"] == lab["target"]
        else:
            lengths = [len(a) / SR for a in it.audios]
            pick = max if lab["which"] in ("longer", "the longest") else min
            assert lengths.index(pick(lengths)) == k - 1 and len(set(lengths)) == len(lengths)
        want = f"clip {k}" if lab["answer_style"] == "index" else f"the {fs.ORDINALS[k - 1]} clip"
        assert it.conversations[1]["value"] == want


def test_dense_caption_lists_every_event_in_order():
    spoken = 0
    for i in range(N_ITEMS):
        it = make("dense_caption", i)
        lab = it.extra["labels"]
        cap = it.conversations[1]["value"]
        assert 20.0 <= lab["duration_s"] <= 60.0
        stamps = re.findall(r"(\d+\.\d)s-(\d+\.\d)s: ", cap)
        assert stamps[0] == ("0.0", f"{lab['duration_s']:.1f}") and f"{lab['noise']} background noise" in cap
        assert [(float(a), float(b)) for a, b in stamps[1:]] == [(e["onset_s"], e["offset_s"]) for e in lab["events"]]
        for e in lab["events"]:
            if e["label"] == "speech":
                spoken += 1
                assert f'says "{e["transcript"]}"' in cap and e["gender"] in ("male", "female")
    assert spoken > 0


def test_think_temporal_reasoning_is_exact_arithmetic():
    kinds = set()
    for i in range(3 * N_ITEMS):
        it = make("think_temporal", i)
        lab = it.extra["labels"]
        kinds.add(lab["kind"])
        reasoning, answer = split_reasoning(it.conversations[1]["value"])
        assert it.conversations[1]["value"].startswith("<think>\n") and answer == lab["answer"]
        onsets = {e["label"]: e["onset_s"] for e in lab["events"]}
        for name, t in re.findall(r"The (\w+) starts at (\d+\.\d)s", reasoning):  # every cited time is a label
            assert any(abs(e["onset_s"] - float(t)) < 1e-9 for e in lab["events"]), (reasoning, lab["events"])
        if lab["kind"] == "gap":
            a, b = lab["asked"]
            assert answer == f"{onsets[b] - onsets[a]:.1f} seconds"
        elif lab["kind"] == "length":
            e = [e for e in lab["events"] if e["label"] == lab["asked"]][0]
            assert answer == f"{e['offset_s'] - e['onset_s']:.1f} seconds"
        elif lab["kind"] == "before":
            assert answer == str(sum(e["onset_s"] < onsets[lab["asked"]] for e in lab["events"]))
        else:
            reps = [k for k, e in enumerate(lab["events"]) if e["label"] == lab["repeated"]]
            nxt = lab["events"][reps[lab["nth"] - 1] + 1]["label"]
            assert nxt != lab["repeated"] and answer == f"the {fs.NOUN[nxt]}"
    assert kinds == {"gap", "after", "before", "length"}


def test_vocabulary_covers_rare_names():
    vocab = set(fs.VOCABULARY)
    assert {"C#4", "Bb minor", "F# major", "sawtooth wave", "120 BPM"} <= vocab
