"""Speech task families: determinism, prompt format, and labels checked against the audio itself.

The strongest checks re-synthesise each clip from its labels (espeak is bit-deterministic) and
subtract it from the item's audio: what is left must be noise at exactly the labelled SNR, which
proves the labelled text, voice, rate, pitch and placement are what the audio contains.
"""

import json
import math
import re
from collections import Counter

import numpy as np
import pytest

from afnext.data import tts
from afnext.data.families import FAMILIES, item_seed
from afnext.data.families import speech as sp

SR = 16_000
N_ITEMS = 5
# families whose variants need more draws before every branch appears
N_ITEMS_BY_FAMILY = {"multi_talker": 10, "speaker_identity": 8}
NAMES = ("asr_digits", "asr_words", "asr_commands", "asr_sentence", "asr_multilingual", "asr_mc", "speech_translation",
         "speaker_gender", "speaker_language", "speaker_identity", "multi_talker")
MC_NAMES = {"asr_mc", "speaker_gender", "speaker_language"}
VOICE_BY_ID = {v.id: v for v in tts.VOICES}


def build(name, i, seed=0):
    return FAMILIES[name].fn(item_seed(seed, "train", name, i), i)


@pytest.fixture(scope="module")
def items():
    return {name: [build(name, i) for i in range(N_ITEMS_BY_FAMILY.get(name, N_ITEMS))] for name in NAMES}


def segments(item):
    labels = item.extra["labels"]
    if "clips" in labels:  # two-clip items: one labels block per clip
        return [(k, s) for k, clip in enumerate(labels["clips"]) for s in clip["segments"]]
    return [(0, s) for s in labels["segments"]]


def clip_labels(item):
    labels = item.extra["labels"]
    return labels["clips"] if "clips" in labels else [labels]


def resynth(seg, n):
    """The segment's speech alone, placed where its labels say, on an ``n``-sample timeline."""
    x = tts.speak(seg["text"], VOICE_BY_ID[seg["voice"]], rate_wpm=seg["rate_wpm"], pitch=seg["pitch"])
    out = np.zeros(n, dtype=np.float64)
    s0 = round(seg["clip_start_s"] * SR)
    assert abs(s0 - seg["clip_start_s"] * SR) < 1e-6  # exact sample times
    out[s0: s0 + x.size] = x
    return out, (s0, s0 + x.size)


# ----------------------------------------------------------------------------- registry and constants


def test_registry():
    for name in NAMES:
        fam = FAMILIES[name]
        assert fam.skill == "speech" and not fam.long
        assert fam.multiple_choice == (name in MC_NAMES), name


def test_vocabularies_are_unambiguous():
    assert 180 <= len(sp.SPEECH_VOCAB) <= 220 and len(set(sp.SPEECH_VOCAB)) == len(sp.SPEECH_VOCAB)
    numbers = {w for n in range(101) for w in re.findall(r"\w+", tts.number_words(n, "en"))}
    assert not numbers & set(sp.SPEECH_VOCAB)
    assert all(w.isalpha() and w.islower() for w in sp.SPEECH_VOCAB)
    for slot in (sp.SUBJECTS, sp.VERBS, sp.OBJECTS, sp.PLACES, sp.TIMES):
        assert len(set(slot)) == len(slot)
    assert set(sp.PHRASES) == set(sp.LANGUAGE_NAMES) and all(len(p) >= 8 for p in sp.PHRASES.values())
    # a phrase of one slot never occurs inside an entry of another slot ("who said '<phrase>'?" is unique)
    slots = (sp.SUBJECTS, sp.OBJECTS, sp.PLACES, sp.VERBS, sp.TIMES)
    for i, a in enumerate(slots):
        for b in slots[i + 1:]:
            assert not [(x, y) for x in a for y in b if x.lower() in y.lower() or y.lower() in x.lower()]


def test_lexicon_is_a_function_in_every_direction():
    assert 38 <= len(sp.LEXICON) <= 45
    meaning = {}
    for entry in sp.LEXICON:
        assert set(entry) == set(sp.LEXICON_LANGUAGES)
        for lang, form in entry.items():
            # a written form, in whatever language it is heard, has one meaning
            assert meaning.setdefault(form, entry["en"]) == entry["en"], (form, lang)
    for lang in sp.LEXICON_LANGUAGES:
        column = [e[lang] for e in sp.LEXICON]
        assert len(set(column)) == len(column), lang


def test_all_text_covers_templates_and_answers(items):
    text = list(sp.all_text())
    assert all(isinstance(t, str) and t for t in text)
    tokens = {w.lower() for t in text for w in re.findall(r"\w+", t)}
    for name, its in items.items():
        for item in its:
            if item.extra["task"] in ("diarization",):
                continue
            answer = item.conversations[1]["value"]
            words = {w.lower() for w in re.findall(r"[^\W\d]+", answer)}
            assert words <= tokens, (name, words - tokens)


# ----------------------------------------------------------------------------- every item


def test_deterministic(items):
    for name, its in items.items():
        for i, a in enumerate(its[:3]):
            b = build(name, i)
            assert len(a.audios) == len(b.audios)
            assert all(x.tobytes() == y.tobytes() for x, y in zip(a.audios, b.audios)), name
            assert a.conversations == b.conversations, name
            assert json.dumps(a.extra, sort_keys=True) == json.dumps(b.extra, sort_keys=True), name
        other = build(name, 0, seed=1)
        assert other.conversations != its[0].conversations or other.audios[0].tobytes() != its[0].audios[0].tobytes()


def test_format_and_audio(items):
    for name, its in items.items():
        for item in its:
            assert item.family == name
            conv = item.conversations
            assert [t["from"] for t in conv] == ["human", "gpt"]
            human, answer = conv[0]["value"], conv[1]["value"]
            tags = re.findall(r"<sound(?:-\d+)?>", human)
            assert len(tags) == len(item.audios) >= 1, name
            prefix = "<sound>\n" if len(item.audios) == 1 else "".join(
                f"<sound-{k + 1}>\n" for k in range(len(item.audios)))
            assert human.startswith(prefix) and len(human) > len(prefix) + 5
            assert answer and answer == answer.strip() and len(answer) < 400
            assert item.extra["task"] in sp.TASKS
            json.dumps(item.extra)  # labels are plain JSON
            for audio in item.audios:
                assert audio.dtype == np.float32 and audio.ndim == 1 and np.isfinite(audio).all()
                assert 2.0 <= audio.size / SR <= 20.0, (name, audio.size / SR)
                assert 0.05 < np.abs(audio).max() <= 0.99 + 1e-6
            assert 2.0 <= item.duration_s <= 20.0


def test_speech_duration_fits_its_text(items):
    for name, its in items.items():
        for item in its:
            for _, seg in segments(item):
                n_words = len(re.findall(r"\w+", seg["text"]))
                speech_s = seg["end_s"] - seg["start_s"]
                assert 0.12 <= speech_s / n_words <= 1.4, (name, seg["text"], speech_s)
                assert seg["start_s"] >= seg["clip_start_s"]


def test_audio_is_the_labelled_speech_at_the_labelled_snr(items):
    """Subtract the re-synthesised speech: the residual is the noise, at exactly snr_db."""
    for name, its in items.items():
        for item in its:
            for k, labels in enumerate(clip_labels(item)):
                audio = item.audios[k].astype(np.float64)
                clean = np.zeros_like(audio)
                active = np.zeros(audio.size, dtype=bool)
                for seg in labels["segments"]:
                    x, (a, b) = resynth(seg, audio.size)
                    clean += x
                    active[a:b] = True
                clean *= 10 ** (labels["output_gain_db"] / 20)
                noise = audio - clean
                snr = 10 * math.log10(np.sum(clean[active] ** 2) / np.sum(noise[active] ** 2))
                assert snr == pytest.approx(labels["snr_db"], abs=0.02), name
                assert labels["noise"] in sp.NOISE_COLORS
                lo, hi = sp.SNR_RANGE_DB
                assert lo <= labels["snr_db"] <= hi


def test_multiple_choice_fields(items):
    for name in MC_NAMES:
        for item in items[name]:
            ex = item.extra
            answer = item.conversations[1]["value"]
            assert ex["answer"] == answer and ex["category"] == "speech"
            assert ex["difficulty"] in ("easy", "medium", "hard") and ex["sub_category"]
            n_choices = 2 if name == "speaker_gender" else 4
            assert len(ex["choices"]) == n_choices and len(set(ex["choices"])) == n_choices
            assert Counter(ex["choices"])[answer] == 1
            human = item.conversations[0]["value"]
            assert ex["question"] in human
            for letter, choice in zip("ABCD", ex["choices"]):
                assert f"({letter}) {choice}" in human
    # the correct option is not always in the same place
    positions = {it.extra["choices"].index(it.extra["answer"]) for n in MC_NAMES for it in items[n]}
    assert len(positions) > 1


# ----------------------------------------------------------------------------- per family


def test_asr_answers(items):
    for item in items["asr_digits"]:
        lab, answer = item.extra["labels"], item.conversations[1]["value"]
        assert re.fullmatch(r"\d( \d){2,7}", answer) and answer == " ".join(map(str, lab["digits"]))
        assert lab["segments"][0]["text"] == answer and lab["segments"][0]["language"] == "en"
    for item in items["asr_words"]:
        lab, answer = item.extra["labels"], item.conversations[1]["value"]
        assert answer == " ".join(lab["words"]) and 3 <= len(lab["words"]) <= 6
        assert all(w in sp.SPEECH_VOCAB for w in lab["words"])
        assert re.sub(r"[,.]", "", lab["segments"][0]["text"]) == answer
    for item in items["asr_commands"]:
        lab, answer = item.extra["labels"], item.conversations[1]["value"]
        assert answer == " ".join(lab["words"]) and 3 <= len(lab["words"]) <= 6 and len(set(lab["words"])) == len(lab["words"])
        assert all(w in sp.COMMAND_WORDS for w in lab["words"])
        assert re.sub(r"[,.]", "", lab["segments"][0]["text"]) == answer
    for item in items["asr_sentence"]:
        lab, answer = item.extra["labels"], item.conversations[1]["value"]
        parts = lab["parts"]
        expected = " ".join(p for p in (parts["subject"], parts["verb"], parts["object"], parts["place"],
                                        parts["time"]) if p)
        assert answer == expected[0].upper() + expected[1:] + "." == lab["segments"][0]["text"]
    for item in items["asr_mc"]:
        ex = item.extra
        assert ex["labels"]["segments"][0]["text"] == ex["answer"]
        truth = ex["answer"].split()
        for choice in ex["choices"]:
            if choice != ex["answer"]:
                other = choice.split()
                assert len(other) == len(truth) and sum(a != b for a, b in zip(other, truth)) == 1


def _broad(ipa: str) -> str:
    return re.sub(r"[ˈˌ\s]", "", ipa)


def test_asr_multilingual_reads_each_number_on_its_own(items):
    """espeak reads the comma-separated sequence exactly as it reads each number alone, and
    ``number_words`` is what it reads for one number (tested in test_data_sounds), so the transcript
    is what is said. With plain spaces German and French would read "5 100" as 5100."""
    for item in items["asr_multilingual"]:
        lab, answer = item.extra["labels"], item.conversations[1]["value"]
        seg = lab["segments"][0]
        lang = seg["language"]
        assert lang in sp.OTHER_LANGUAGES and sp.LANGUAGE_NAMES[lang] in item.conversations[0]["value"]
        assert answer == ", ".join(tts.number_words(n, lang) for n in lab["numbers"])
        assert seg["text"] == ", ".join(map(str, lab["numbers"])) + "."
        each = [_broad(p) for p in tts.phonemes([str(n) for n in lab["numbers"]], lang)]
        assert _broad(tts.phonemes(seg["text"], lang)) == "".join(each), seg["text"]
    for lang in ("de", "fr"):
        each = "".join(_broad(tts.phonemes(t, lang)) for t in ("5", "100", "2"))
        assert _broad(tts.phonemes("5, 100, 2.", lang)) == each
        assert _broad(tts.phonemes("5 100 2.", lang)) != each  # "fünftausend...", "cinq mille..."


def test_speech_translation(items):
    for item in items["speech_translation"]:
        lab, answer = item.extra["labels"], item.conversations[1]["value"]
        src, dst = lab["source_language"], lab["target_language"]
        assert src != dst and lab["segments"][0]["language"] == src
        assert sp.LANGUAGE_NAMES[dst] in item.conversations[0]["value"]
        if lab["kind"] == "number":
            assert lab["segments"][0]["text"] == str(lab["concept"])
            assert answer == tts.number_words(lab["concept"], dst)
        else:
            entry = next(e for e in sp.LEXICON if e["en"] == lab["concept"])
            assert lab["segments"][0]["text"] == entry[src] and answer == entry[dst]
    kinds = {it.extra["labels"]["kind"] for i in range(12) for it in [build("speech_translation", i)]}
    assert kinds == {"number", "word"}


def test_speaker_gender_and_language(items):
    for item in items["speaker_gender"]:
        seg = item.extra["labels"]["segments"][0]
        assert item.conversations[1]["value"] == VOICE_BY_ID[seg["voice"]].gender == seg["gender"]
        assert set(item.extra["choices"]) == {"male", "female"}
    for item in items["speaker_language"]:
        seg = item.extra["labels"]["segments"][0]
        assert item.conversations[1]["value"] == sp.LANGUAGE_NAMES[VOICE_BY_ID[seg["voice"]].language]
        assert set(item.extra["choices"]) <= set(sp.LANGUAGE_NAMES.values())


def test_speaker_identity(items):
    seen = set()
    for item in items["speaker_identity"]:
        lab, answer = item.extra["labels"], item.conversations[1]["value"]
        ids = [clip["segments"][0]["voice"] for clip in lab["clips"]]
        assert ids == lab["voices"]
        same = ids[0] == ids[1]
        assert lab["same_speaker"] == same and answer == ("yes" if same else "no")
        texts = [clip["segments"][0]["text"] for clip in lab["clips"]]
        assert lab["same_text"] == (texts[0] == texts[1])
        seen.add(same)
    assert seen == {True, False}


def _speech_bounds_independent(x: np.ndarray, floor_db: float) -> tuple[int, int]:
    """Onset/offset of a 10-ms moving RMS (looking forward for the onset, back for the offset)."""
    w = 160
    power = np.convolve(x.astype(np.float64) ** 2, np.ones(w) / w, mode="full")
    fwd, back = power[w - 1:], power[: x.size]
    on = np.flatnonzero(fwd >= fwd.max() * 10 ** (floor_db / 10))[0]
    off = np.flatnonzero(back >= back.max() * 10 ** (floor_db / 10))[-1] + 1
    return int(on), int(off)


def test_multi_talker_timestamps_match_each_voice_alone(items):
    variants = set()
    for item in items["multi_talker"]:
        lab, answer = item.extra["labels"], item.conversations[1]["value"]
        segs = lab["segments"]
        assert sorted(s["gender"] for s in segs) == ["female", "male"] and segs[0]["text"] != segs[1]["text"]
        assert all(s["language"] == "en" for s in segs)
        n = item.audios[0].size
        for seg in segs:
            alone, _ = resynth(seg, n)
            on, _ = _speech_bounds_independent(alone, -35.0)
            _, off = _speech_bounds_independent(alone, -40.0)
            assert abs(on / SR - seg["start_s"]) <= 0.020, (seg, on / SR)
            # a speech tail decays slowly, so its end depends on the floor more than an onset does
            assert abs(off / SR - seg["end_s"]) <= 0.050, (seg, off / SR)
        first, second = segs
        assert first["start_s"] < second["start_s"] < first["end_s"]  # partial overlap
        assert lab["overlap_s"] == pytest.approx(first["end_s"] - second["start_s"], abs=1e-9)
        assert 0.2 <= lab["overlap_s"] < min(s["end_s"] - s["start_s"] for s in segs)
        assert lab["first_speaker"] == first["gender"]
        task = item.extra["task"]
        variants.add(task)
        if task == "who_said":
            owner = next(s for s in segs if s["gender"] == lab["phrase_speaker"])
            other = next(s for s in segs if s is not owner)
            assert lab["phrase"] in owner["text"].lower() and lab["phrase"] not in other["text"].lower()
            assert f"'{lab['phrase']}'" in item.conversations[0]["value"]
            assert answer == f"the {owner['gender']} speaker"
        elif task == "who_first":
            assert answer == f"the {first['gender']} speaker"
        else:
            lines = answer.split("\n")
            assert len(lines) == 2
            for line, seg in zip(lines, segs):
                m = re.fullmatch(r"\[(\d+\.\d\d)-(\d+\.\d\d)\] (male|female): (.+)", line)
                assert m, line
                assert float(m[1]) == pytest.approx(seg["start_s"], abs=0.0051)
                assert float(m[2]) == pytest.approx(seg["end_s"], abs=0.0051)
                assert m[3] == seg["gender"] and m[4] == seg["text"]
    assert variants == {"who_said", "who_first", "diarization"}
