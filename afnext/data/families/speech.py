"""Speech task families: transcription, translation, speaker attributes and two-talker scenes.

Every item is built from espeak-ng speech (``afnext.data.tts``), so the words in the audio are known
exactly: the text we hand the synthesiser *is* the transcript. What makes that true, family by family:

* English transcription uses a closed vocabulary with no homophones (no "two/to", "right/write") and
  no number words, so one spoken form has one written form. Digit strings are spoken with spaces,
  which espeak reads digit by digit ("4 7 1 9" -> "four seven one nine").
* Numbers in other languages are spoken from digits separated by ", " and transcribed with
  ``tts.number_words``, which spells 0..100 the way espeak reads them. The comma matters: with plain
  spaces German and French espeak read "5 100" as 5100 ("fünftausendeinhundert"), because a space is
  their thousands separator. Texts end with a full stop: the synthesiser speaks a final "..., 9"
  either way, but ``tts.phonemes`` (which the tests use to check the reading) drops it without one.
* The bilingual lexicon (``LEXICON``) maps each concept to one written form per language; a form that
  occurs in several languages ("rosa", "casa", "orange") always means the same concept, so the
  translation target is determined by what is heard whichever language the listener takes it for.

Audio layout. Each utterance is placed after a random lead-in, padded to at least ``MIN_CLIP_S``, and
mixed with white, pink or brown noise (``sounds.colored_noise``) at an SNR drawn from ``SNR_RANGE_DB``,
defined as ``sounds.Scene.render`` defines it: speech power over the clips' spans against noise power
over the same spans. ``labels`` keep everything needed to re-create the audio (voice id, espeak voice
name, text, rate, pitch, the sample where the synthesiser's output was placed) plus the *speech*
bounds: espeak output carries ``tts.MARGIN_S`` of near-silence at both ends, so we locate the first and
last 5-ms frame within ``SPEECH_FLOOR_DB`` of the loudest frame and report those sample times.
Multi-talker timestamps are those bounds, so they mark where each voice is audible, not where its
clip was pasted.

Costs. A family call is one or two ``tts.speak`` calls (~5-10 ms each, most of it espeak reloading
its voice) plus one noise FFT per clip. We mix on plain arrays rather than through ``Scene.render``
for two measured reasons: an FFT of an arbitrary (often prime-factor-heavy) length costs up to ~25 ms
for 4 s of audio against ~0.5 ms at a 5-smooth length, so noise is drawn at ``_fast_len(n)`` samples
and cut; and a float64 ``np.dot`` over a few seconds goes through BLAS, whose threads (spinning on a
2-core machine) make it cost milliseconds, where ``np.square(..., dtype=float64).sum()`` costs
microseconds. ``colored_noise`` still calls one ``np.dot`` per pink/brown clip, so workers should run
with ``OPENBLAS_NUM_THREADS=1`` (about 2.5x faster end to end here). Items are 2-8 s long.

Conventions shared with the other families (see ``afnext.data.families``):

* human turn: ``"<sound>\\n" + question`` (``"<sound-1>\\n<sound-2>\\n"`` for two clips);
* gpt turn: a short answer that can be checked by string equality (ASR answers also by WER);
* ``extra["task"]``: one of ``TASKS`` (what the answer is, so a grader picks its metric);
* ``extra["labels"]``: the ground truth, JSON-serialisable;
* multiple-choice items add MMAU's fields (``question`` without the options, ``choices``, ``answer``,
  ``category`` = "speech", ``sub_category`` (MMAU's "sub-category"; ``synth`` renames it),
  ``difficulty``) and list the options in the prompt; the gpt turn is the answer string itself.
  ``speaker_gender`` has two choices (male/female), as MMAU's own binary items do; every other MC
  item has four.

All text the families can emit (vocabularies, lexicon, phrases, question templates, number words) is in
module constants; ``all_text()`` yields it for tokenizer training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from afnext.audio import SAMPLE_RATE
from afnext.data import tts
from afnext.data.families import Item, family
from afnext.data.sounds import MAX_PEAK, colored_noise

# ----------------------------------------------------------------------------- constants

MIN_CLIP_S = 2.0  # seconds; shorter utterances are padded with (noisy) silence up to this
LEAD_RANGE_S = (0.1, 0.8)  # seconds of background before the speech starts
TAIL_RANGE_S = (0.1, 0.6)  # seconds of background after it ends
SNR_RANGE_DB = (12.0, 35.0)  # "light" background noise, drawn uniformly, rounded to 0.1 dB
NOISE_COLORS = ("white", "pink", "brown")
RATE_RANGE_WPM = (135, 195)  # espeak speaking rate; 160 is its default
PITCH_RANGE = (38, 62)  # espeak pitch around each voice's own base (50); small enough to keep gender clear
SPEECH_FRAME_S = 0.005  # seconds per frame of the speech-bounds detector
SPEECH_FLOOR_DB = -40.0  # frames within this of the loudest frame count as speech
MIN_OVERLAP_S = 0.2  # seconds; two-talker overlaps are drawn from here to half the shorter utterance
EASY_SNR_DB, HARD_SNR_DB = 28.0, 18.0  # difficulty of MC items: >= easy is "easy", < hard is "hard"

TASKS = ("asr", "asr_mc", "translation", "gender", "language_id", "speaker_verification", "who_said",
         "who_first", "diarization")

LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian"}
OTHER_LANGUAGES = ("de", "fr", "es", "it")

# ~200 common English words with a single spelling for their sound: homophones ("two/to", "by/buy",
# "build/billed", "morning/mourning"), near-homophones in American English ("ladder/latter"), number
# words and function words are left out so the transcript of a word list is unambiguous.
SPEECH_VOCAB: tuple[str, ...] = tuple("""
airport apple banana basket bicycle blanket bottle bridge brother bucket butter button cabbage cabinet
camera candle captain carpet castle chair cheese cherry chicken church circle city clock cloud coffee
cookie corner cotton country desk diamond doctor dollar dragon dream elephant engine factory farmer
feather finger forest garden giraffe glass guitar hammer helmet hospital island jacket jungle kettle
kitchen lantern lemon letter library lion lizard magnet market mirror monkey mother mountain museum
napkin needle ocean office orange paper parrot pencil penguin pepper picture pillow pirate planet
pocket potato pumpkin puzzle rabbit river robot rocket salad sandwich school shadow shoulder shovel
silver sister soldier spider sponge spoon squirrel station stone street student sugar summer table
teacher thunder ticket tiger tomato tower tractor train trumpet tunnel turtle umbrella valley village
violin volcano wagon wallet whistle window winter wizard zebra
angry bright broken careful clean cold dark deep empty famous fast friendly gentle golden green happy
heavy honest hungry little lucky modern narrow purple quiet rapid simple small smooth soft strong
thick tired warm wild yellow young
answer begin borrow bring carry catch cook dance drink drive enjoy explain follow forget gather jump
laugh listen open paint play pull push remember run sing sleep smile speak study swim travel visit
walk wash watch whisper work
""".split())

# Sentence grammar: SUBJECT VERB OBJECT PLACE [TIME]. Verbs are past tense and transitive; no entry
# is a substring of another entry of a different slot, so a phrase names exactly one speaker.
SUBJECTS: tuple[str, ...] = (
    "the teacher", "my brother", "a little girl", "the old farmer", "our neighbor", "the doctor",
    "a tall man", "the young woman", "my grandmother", "the students", "the captain", "her friend",
    "the pilot", "his uncle", "the baker", "a tired driver",
)
VERBS: tuple[str, ...] = (
    "found", "painted", "carried", "bought", "dropped", "cleaned", "opened", "borrowed", "fixed", "hid",
    "washed", "packed", "forgot", "noticed", "wrapped", "chose",
)
OBJECTS: tuple[str, ...] = (
    "a red box", "the old map", "a heavy bag", "the green bottle", "a wooden chair", "the broken clock",
    "a small basket", "the silver key", "a yellow kite", "the blue umbrella", "a paper lantern",
    "the golden ring", "a warm blanket", "the purple jacket", "a glass vase", "the leather wallet",
)
PLACES: tuple[str, ...] = (
    "in the kitchen", "near the station", "at the market", "behind the house", "in the garden",
    "on the bridge", "under the table", "next to the river", "at the school", "in the village",
    "on the train", "beside the window", "at the airport", "in the library",
)
TIMES: tuple[str, ...] = ("yesterday", "this morning", "last week", "on Sunday", "after lunch", "before dinner")

# Short everyday sentences per language (same meanings across languages), for tasks where the words
# are not the answer: gender, language and speaker identity.
PHRASES: dict[str, tuple[str, ...]] = {
    "en": ("good morning, how are you today", "the train leaves at nine o'clock", "please close the window",
           "I would like a cup of coffee", "where is the nearest station", "thank you very much for your help",
           "we are going to the beach tomorrow", "my sister lives in a small town",
           "the weather is very nice today", "can you help me find my keys"),
    "de": ("guten Morgen, wie geht es dir heute", "der Zug fährt um neun Uhr ab", "bitte schließ das Fenster",
           "ich hätte gern eine Tasse Kaffee", "wo ist der nächste Bahnhof", "vielen Dank für deine Hilfe",
           "wir fahren morgen an den Strand", "meine Schwester wohnt in einer kleinen Stadt",
           "das Wetter ist heute sehr schön", "kannst du mir helfen, meine Schlüssel zu finden"),
    "fr": ("bonjour, comment allez-vous aujourd'hui", "le train part à neuf heures",
           "fermez la fenêtre, s'il vous plaît", "je voudrais une tasse de café", "où est la gare la plus proche",
           "merci beaucoup pour votre aide", "nous allons à la plage demain", "ma sœur habite dans une petite ville",
           "il fait très beau aujourd'hui", "pouvez-vous m'aider à trouver mes clés"),
    "es": ("buenos días, cómo estás hoy", "el tren sale a las nueve", "por favor, cierra la ventana",
           "quisiera una taza de café", "dónde está la estación más cercana", "muchas gracias por tu ayuda",
           "mañana vamos a la playa", "mi hermana vive en un pueblo pequeño", "hoy hace muy buen tiempo",
           "puedes ayudarme a encontrar mis llaves"),
    "it": ("buongiorno, come stai oggi", "il treno parte alle nove", "per favore, chiudi la finestra",
           "vorrei una tazza di caffè", "dov'è la stazione più vicina", "grazie mille per il tuo aiuto",
           "domani andiamo al mare", "mia sorella abita in una piccola città", "oggi fa molto bello",
           "puoi aiutarmi a trovare le mie chiavi"),
}

# Bilingual lexicon: concept -> one written form per language (German nouns capitalised, colours in
# their base/masculine form). A form shared between languages always means the same concept.
_LEXICON_ROWS = """
red        rot         rouge       rojo        rosso
blue       blau        bleu        azul        blu
green      grün        vert        verde       verde
yellow     gelb        jaune       amarillo    giallo
black      schwarz     noir        negro       nero
white      weiß        blanc       blanco      bianco
brown      braun       marron      marrón      marrone
gray       grau        gris        gris        grigio
pink       rosa        rose        rosa        rosa
orange     orange      orange      naranja     arancione
purple     lila        violet      morado      viola
dog        Hund        chien       perro       cane
cat        Katze       chat        gato        gatto
horse      Pferd       cheval      caballo     cavallo
cow        Kuh         vache       vaca        mucca
bird       Vogel       oiseau      pájaro      uccello
fish       Fisch       poisson     pez         pesce
mouse      Maus        souris      ratón       topo
bear       Bär         ours        oso         orso
wolf       Wolf        loup        lobo        lupo
pig        Schwein     cochon      cerdo       maiale
sheep      Schaf       mouton      oveja       pecora
rabbit     Kaninchen   lapin       conejo      coniglio
duck       Ente        canard      pato        anatra
frog       Frosch      grenouille  rana        rana
Monday     Montag      lundi       lunes       lunedì
Tuesday    Dienstag    mardi       martes      martedì
Wednesday  Mittwoch    mercredi    miércoles   mercoledì
Thursday   Donnerstag  jeudi       jueves      giovedì
Friday     Freitag     vendredi    viernes     venerdì
Saturday   Samstag     samedi      sábado      sabato
Sunday     Sonntag     dimanche    domingo     domenica
apple      Apfel       pomme       manzana     mela
bread      Brot        pain        pan         pane
water      Wasser      eau         agua        acqua
milk       Milch       lait        leche       latte
house      Haus        maison      casa        casa
sun        Sonne       soleil      sol         sole
moon       Mond        lune        luna        luna
tree       Baum        arbre       árbol       albero
book       Buch        livre       libro       libro
"""
LEXICON_LANGUAGES = ("en", "de", "fr", "es", "it")
LEXICON: tuple[dict[str, str], ...] = tuple(
    dict(zip(LEXICON_LANGUAGES, row.split())) for row in _LEXICON_ROWS.strip().splitlines())

# Question templates, several per family; {lang}/{src} are English language names.
PROMPTS: dict[str, tuple[str, ...]] = {
    "asr": ("Transcribe the input speech.", "Transcribe the speech in this audio.",
            "What does the speaker say? Write down the exact words.", "Write out what is said in the recording.",
            "Please transcribe this audio clip."),
    "asr_digits": ("Transcribe the input speech.", "Write down the digits the speaker says, separated by spaces.",
                   "Which digits are spoken? Answer with the digits only.", "Transcribe the spoken digit sequence."),
    "asr_multilingual": ("Transcribe the {lang} speech, writing the numbers as words.",
                         "The speaker reads numbers in {lang}. Write them out as {lang} words.",
                         "Transcribe the input speech in {lang}, spelling out each number.",
                         "What numbers does the speaker say? Answer in {lang} words, separated by commas."),
    "translation": ("Translate the spoken word into {lang}.", "What is the spoken word in {lang}?",
                    "The speaker says a word in {src}. Give its {lang} translation.",
                    "Say what you hear in {lang}.", "Translate the speech into {lang}. Answer with one word."),
    "translation_number": ("Translate the spoken number into {lang}, written as a word.",
                           "The speaker says a number in {src}. Write it as a word in {lang}.",
                           "What is the spoken number in {lang}? Spell it out."),
    "gender": ("What is the gender of the speaker?", "Is the speaker male or female?",
               "Is this voice male or female?", "Which best describes the speaker's voice?"),
    "language_id": ("What language is spoken in the audio?", "Which language is the speaker using?",
                    "Identify the language of the speech.", "In which language is this recording?"),
    "speaker_verification": ("Are these the same speaker?", "Do the two recordings come from the same speaker?",
                             "Is the person speaking in the first clip the same as in the second? Answer yes or no.",
                             "Were both clips spoken by the same person?"),
    "who_said": ("Who said '{phrase}'?", "Which speaker says '{phrase}'?",
                 "One male and one female speaker talk. Who said '{phrase}'?"),
    "who_first": ("Which speaker starts talking first?", "Who speaks first, the male or the female speaker?",
                  "Two people talk. Who begins?"),
    "diarization": ("Transcribe the conversation with speaker labels and timestamps.",
                    "Who speaks when? Give each utterance as [start-end] speaker: text.",
                    "Write a diarized transcript: one line per utterance with start and end time in seconds, "
                    "the speaker (male or female) and the words."),
    "asr_mc": ("Which of the following is the correct transcription of the speech?",
               "Which transcript matches what the speaker says?", "What exactly does the speaker say?"),
}
MC_INSTRUCTIONS: tuple[str, ...] = ("Choose the correct option from the following options:",
                                    "Select one of the options:", "Options:")
MC_LETTERS = "ABCDEFGH"
SPEAKER_ANSWERS = {"male": "the male speaker", "female": "the female speaker"}
YES, NO = "yes", "no"


# ----------------------------------------------------------------------------- building blocks


@dataclass(frozen=True)
class Utterance:
    """One synthesised utterance with the settings that reproduce it and its speech bounds (samples)."""

    audio: np.ndarray
    text: str
    voice: tts.Voice
    rate_wpm: int
    pitch: int
    on: int  # first speech sample within ``audio``
    off: int  # one past the last speech sample

    def labels(self) -> dict:
        v = self.voice
        return {"text": self.text, "voice": v.id, "voice_name": v.name, "language": v.language,
                "gender": v.gender, "rate_wpm": self.rate_wpm, "pitch": self.pitch}


def speech_bounds(x: np.ndarray, floor_db: float = SPEECH_FLOOR_DB) -> tuple[int, int]:
    """[first, last) sample of the 5-ms frames within ``floor_db`` of the loudest frame."""
    hop = round(SPEECH_FRAME_S * SAMPLE_RATE)
    nf = len(x) // hop
    energy = np.square(x[: nf * hop].reshape(nf, hop), dtype=np.float64).mean(axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (floor_db / 10))
    return int(loud[0]) * hop, min(len(x), (int(loud[-1]) + 1) * hop)


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _say(rng: np.random.Generator, text: str, voice: tts.Voice, *, rate_wpm: int | None = None,
         pitch: int | None = None) -> Utterance:
    rate = int(rng.integers(RATE_RANGE_WPM[0], RATE_RANGE_WPM[1] + 1)) if rate_wpm is None else rate_wpm
    pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)) if pitch is None else pitch
    x = tts.speak(text, voice, rate_wpm=rate, pitch=pitch)
    on, off = speech_bounds(x)
    return Utterance(x, text, voice, rate, pitch, on, off)


def _noise(rng: np.random.Generator) -> tuple[str, float]:
    return _pick(rng, NOISE_COLORS), round(float(rng.uniform(*SNR_RANGE_DB)), 1)


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: an FFT length pocketfft handles fast (a prime length is ~50x slower)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _energy(x: np.ndarray) -> float:
    # np.square with a float64 accumulator, not np.dot: BLAS threading makes a float64 dot of a few
    # seconds of audio cost milliseconds.
    return float(np.square(x, dtype=np.float64).sum())


def _render(rng: np.random.Generator, placed: list[tuple[Utterance, int]], n: int) -> tuple[np.ndarray, dict]:
    """Mix utterances at the given clip start samples into ``n`` samples, with noise at a random SNR.

    The SNR follows ``sounds.Scene.render``: speech power and noise power both measured over the union
    of the clips' spans. Noise is ``sounds.colored_noise`` drawn at an FFT-friendly length and cut to
    ``n`` (same spectrum, far cheaper than an FFT of arbitrary length). As in ``Scene.render`` the
    whole mix is scaled down if it would peak above ``MAX_PEAK``, leaving the SNR unchanged; that gain
    is ``output_gain_db``. Labels: noise settings, output gain, and one segment per utterance with its
    reproduction settings, ``clip_start_s`` (where the synthesiser's output begins) and
    ``start_s``/``end_s`` (where the speech is audible), all exact sample times.
    """
    color, snr = _noise(rng)
    mix = np.zeros(n, dtype=np.float32)
    active = np.zeros(n, dtype=bool)
    segments = []
    for utt, s0 in placed:
        if s0 < 0 or s0 + len(utt.audio) > n:
            raise AssertionError(f"clip [{s0}, {s0 + len(utt.audio)}) outside the mix of {n} samples")
        mix[s0: s0 + len(utt.audio)] += utt.audio
        active[s0: s0 + len(utt.audio)] = True
        segments.append({**utt.labels(), "clip_start_s": s0 / SAMPLE_RATE, "start_s": (s0 + utt.on) / SAMPLE_RATE,
                         "end_s": (s0 + utt.off) / SAMPLE_RATE})
    noise = colored_noise(_fast_len(n), color, rng)[:n]
    gain = math.sqrt(_energy(mix[active]) / _energy(noise[active]) * 10 ** (-snr / 10))
    wave = mix + np.float32(gain) * noise
    peak = float(np.abs(wave).max())
    out_db = 0.0
    if peak > MAX_PEAK:
        wave *= np.float32(MAX_PEAK / peak)
        out_db = 20 * math.log10(MAX_PEAK / peak)
    return wave, {"noise": color, "snr_db": snr, "output_gain_db": out_db, "segments": segments}


def _single(rng: np.random.Generator, utt: Utterance) -> tuple[np.ndarray, dict]:
    """One utterance after a random lead-in, padded to at least ``MIN_CLIP_S``."""
    lead = float(rng.uniform(*LEAD_RANGE_S))
    tail = float(rng.uniform(*TAIL_RANGE_S))
    n = len(utt.audio)
    lead_n = round(lead * SAMPLE_RATE)
    total_n = max(round(MIN_CLIP_S * SAMPLE_RATE), lead_n + n + round(tail * SAMPLE_RATE))
    return _render(rng, [(utt, lead_n)], total_n)


def _human(question: str, n_audios: int = 1) -> str:
    tags = "<sound>\n" if n_audios == 1 else "".join(f"<sound-{i + 1}>\n" for i in range(n_audios))
    return tags + question


def _item(name: str, audios: list[np.ndarray], prompt: str, answer: str, task: str, labels: dict,
          mc: dict | None = None) -> Item:
    conv = [{"from": "human", "value": _human(prompt, len(audios))}, {"from": "gpt", "value": answer}]
    return Item("", name, audios, conv, {"task": task, "labels": labels, **(mc or {})})


def _difficulty(snr_db: float) -> str:
    return "easy" if snr_db >= EASY_SNR_DB else "hard" if snr_db < HARD_SNR_DB else "medium"


def _mc(rng: np.random.Generator, question: str, answer: str, distractors: list[str], difficulty: str,
        sub_category: str) -> tuple[str, dict]:
    """(prompt listing the shuffled options, MMAU fields for ``extra``)."""
    options = [answer, *distractors]
    if len(set(options)) != len(options):
        raise AssertionError(f"duplicate options {options}")  # a bug in a distractor generator
    choices = [options[i] for i in rng.permutation(len(options))]
    listing = "\n".join(f"({MC_LETTERS[i]}) {c}" for i, c in enumerate(choices))
    prompt = f"{question}\n{_pick(rng, MC_INSTRUCTIONS)}\n{listing}"
    fields = {"question": question, "choices": choices, "answer": answer, "category": "speech",
              "sub_category": sub_category, "difficulty": difficulty}
    return prompt, fields


def _sentence(rng: np.random.Generator, avoid: dict | None = None) -> tuple[str, dict]:
    """A grammar sentence (capitalised, full stop) and its parts; ``avoid`` parts are not reused."""
    parts = {}
    for slot, options in (("subject", SUBJECTS), ("verb", VERBS), ("object", OBJECTS), ("place", PLACES)):
        taken = (avoid or {}).get(slot)
        pool = [o for o in options if o != taken]
        parts[slot] = _pick(rng, pool)
    parts["time"] = _pick(rng, TIMES) if rng.random() < 0.4 else ""
    words = " ".join(p for p in parts.values() if p)
    return words[0].upper() + words[1:] + ".", parts


def _en_voice(rng: np.random.Generator, gender: str | None = None) -> tts.Voice:
    return _pick(rng, tts.voices("en", gender))


# ----------------------------------------------------------------------------- transcription


@family("asr_digits", skill="speech")
def asr_digits(rng: np.random.Generator, index: int) -> Item:
    """3-8 digits read by an English voice; the answer is the digits separated by spaces."""
    digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 9)))]
    text = " ".join(map(str, digits))  # spaces: espeak reads each digit on its own
    wave, labels = _single(rng, _say(rng, text, _en_voice(rng)))
    return _item("asr_digits", [wave], _pick(rng, PROMPTS["asr_digits"]), text, "asr",
                 {"transcript": text, "digits": digits, **labels})


@family("asr_words", skill="speech")
def asr_words(rng: np.random.Generator, index: int) -> Item:
    """3-6 distinct words from ``SPEECH_VOCAB``; answer: the words in order, lower case, spaces."""
    idx = rng.choice(len(SPEECH_VOCAB), size=int(rng.integers(3, 7)), replace=False)
    words = [SPEECH_VOCAB[i] for i in idx]
    transcript = " ".join(words)
    # Half the lists are read with commas (a pause after each word), half as one phrase.
    spoken = ", ".join(words) + "." if rng.random() < 0.5 else transcript
    wave, labels = _single(rng, _say(rng, spoken, _en_voice(rng)))
    return _item("asr_words", [wave], _pick(rng, PROMPTS["asr"]), transcript, "asr",
                 {"transcript": transcript, "words": words, "spoken_text": spoken, **labels})


# A Speech-Commands-sized vocabulary: 20 short, acoustically distinct English command words (no
# homophones, no number words), so a small model meets each word hundreds of times in a nano corpus.
COMMAND_WORDS: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
                                  "forward", "backward", "follow", "learn", "bed", "bird", "cat", "dog",
                                  "house", "tree")


@family("asr_commands", skill="speech")
def asr_commands(rng: np.random.Generator, index: int) -> Item:
    """3-6 distinct words from ``COMMAND_WORDS``; answer: the words in order, lower case, spaces."""
    words = [COMMAND_WORDS[i] for i in rng.choice(len(COMMAND_WORDS), size=int(rng.integers(3, 7)), replace=False)]
    transcript = " ".join(words)
    spoken = ", ".join(words) + "." if rng.random() < 0.5 else transcript
    wave, labels = _single(rng, _say(rng, spoken, _en_voice(rng)))
    return _item("asr_commands", [wave], _pick(rng, PROMPTS["asr"]), transcript, "asr",
                 {"transcript": transcript, "words": words, "spoken_text": spoken, **labels})


@family("asr_sentence", skill="speech")
def asr_sentence(rng: np.random.Generator, index: int) -> Item:
    """A grammar sentence ("The doctor found a red box in the garden yesterday.") read in English."""
    text, parts = _sentence(rng)
    wave, labels = _single(rng, _say(rng, text, _en_voice(rng)))
    return _item("asr_sentence", [wave], _pick(rng, PROMPTS["asr"]), text, "asr",
                 {"transcript": text, "parts": parts, **labels})


@family("asr_multilingual", skill="speech")
def asr_multilingual(rng: np.random.Generator, index: int) -> Item:
    """2-5 numbers (0-100, or single digits) read in German, French, Spanish or Italian.

    The answer spells them with ``tts.number_words`` joined by ", " (French "soixante et onze" has
    spaces of its own, so a comma is what separates numbers).
    """
    lang = _pick(rng, OTHER_LANGUAGES)
    hi = 10 if rng.random() < 0.3 else 101
    numbers = [int(n) for n in rng.integers(0, hi, size=int(rng.integers(2, 6)))]
    spoken = ", ".join(map(str, numbers)) + "."  # ", " not " ": a space groups thousands in de/fr
    transcript = ", ".join(tts.number_words(n, lang) for n in numbers)
    wave, labels = _single(rng, _say(rng, spoken, _pick(rng, tts.voices(lang))))
    question = _pick(rng, PROMPTS["asr_multilingual"]).format(lang=LANGUAGE_NAMES[lang])
    return _item("asr_multilingual", [wave], question, transcript, "asr",
                 {"transcript": transcript, "numbers": numbers, "spoken_text": spoken, **labels})


def _one_change(rng: np.random.Generator, tokens: list[str], pool, n: int) -> list[list[str]]:
    """``n`` distinct variants of ``tokens``, each with exactly one token replaced from ``pool``."""
    out: list[list[str]] = []
    seen = {tuple(tokens)}
    while len(out) < n:
        pos = int(rng.integers(len(tokens)))
        alt = list(tokens)
        alt[pos] = _pick(rng, pool)
        if tuple(alt) not in seen:
            seen.add(tuple(alt))
            out.append(alt)
    return out


@family("asr_mc", skill="speech", multiple_choice=True)
def asr_mc(rng: np.random.Generator, index: int) -> Item:
    """Pick the transcript among three distractors that each differ in one digit or word."""
    if rng.random() < 0.5:
        tokens = [str(d) for d in rng.integers(0, 10, size=int(rng.integers(4, 8)))]
        pool, kind = [str(d) for d in range(10)], "digits"
    else:
        tokens = [SPEECH_VOCAB[i] for i in rng.choice(len(SPEECH_VOCAB), size=int(rng.integers(3, 6)), replace=False)]
        pool, kind = [w for w in SPEECH_VOCAB if w not in tokens], "words"
    text = " ".join(tokens)
    wave, labels = _single(rng, _say(rng, text, _en_voice(rng)))
    distractors = [" ".join(t) for t in _one_change(rng, tokens, pool, 3)]
    prompt, mc = _mc(rng, _pick(rng, PROMPTS["asr_mc"]), text, distractors, _difficulty(labels["snr_db"]),
                     "Phonological Sequence Decoding")
    return _item("asr_mc", [wave], prompt, text, "asr_mc", {"transcript": text, "kind": kind, **labels}, mc)


# ----------------------------------------------------------------------------- translation


@family("speech_translation", skill="speech")
def speech_translation(rng: np.random.Generator, index: int) -> Item:
    """A lexicon word or a number (0-100) spoken in language A, asked for in language B (B != A).

    Numbers are spoken from digits, so what is heard is ``number_words(n, A)`` and the target is
    ``number_words(n, B)``. The question names B in English; some templates also name A.
    """
    src, dst = (LEXICON_LANGUAGES[i] for i in rng.choice(len(LEXICON_LANGUAGES), size=2, replace=False))
    if rng.random() < 0.35:
        n = int(rng.integers(0, 101))
        spoken, source, target, kind = str(n), tts.number_words(n, src), tts.number_words(n, dst), "number"
        template = _pick(rng, PROMPTS["translation_number"])
        concept = n
    else:
        entry = _pick(rng, LEXICON)
        spoken = source = entry[src]
        target, kind, concept = entry[dst], "word", entry["en"]
        template = _pick(rng, PROMPTS["translation"])
    wave, labels = _single(rng, _say(rng, spoken, _pick(rng, tts.voices(src))))
    question = template.format(lang=LANGUAGE_NAMES[dst], src=LANGUAGE_NAMES[src])
    return _item("speech_translation", [wave], question, target, "translation",
                 {"source_language": src, "target_language": dst, "kind": kind, "concept": concept,
                  "source_text": source, "target_text": target, "spoken_text": spoken, **labels})


# ----------------------------------------------------------------------------- speaker attributes


def _native_text(rng: np.random.Generator, lang: str) -> str:
    """Something for a voice of ``lang`` to say: an everyday phrase (or, in English, a grammar sentence)."""
    if lang == "en" and rng.random() < 0.4:
        return _sentence(rng)[0]
    return _pick(rng, PHRASES[lang]) + "."


@family("speaker_gender", skill="speech", multiple_choice=True)
def speaker_gender(rng: np.random.Generator, index: int) -> Item:
    """Male or female voice (the espeak variant file's gender), any of the five languages."""
    voice = _pick(rng, tts.VOICES)
    wave, labels = _single(rng, _say(rng, _native_text(rng, voice.language), voice))
    other = "female" if voice.gender == "male" else "male"
    prompt, mc = _mc(rng, _pick(rng, PROMPTS["gender"]), voice.gender, [other], _difficulty(labels["snr_db"]),
                     "Speaker Gender")
    return _item("speaker_gender", [wave], prompt, voice.gender, "gender", {"gender": voice.gender, **labels}, mc)


@family("speaker_language", skill="speech", multiple_choice=True)
def speaker_language(rng: np.random.Generator, index: int) -> Item:
    """Which of the five languages is spoken; four options (the answer and three others)."""
    lang = _pick(rng, LEXICON_LANGUAGES)
    wave, labels = _single(rng, _say(rng, _native_text(rng, lang), _pick(rng, tts.voices(lang))))
    others = [LANGUAGE_NAMES[o] for o in LEXICON_LANGUAGES if o != lang]
    distractors = [others[i] for i in rng.choice(len(others), size=3, replace=False)]
    prompt, mc = _mc(rng, _pick(rng, PROMPTS["language_id"]), LANGUAGE_NAMES[lang], distractors,
                     _difficulty(labels["snr_db"]), "Language Identification")
    return _item("speaker_language", [wave], prompt, LANGUAGE_NAMES[lang], "language_id",
                 {"language_name": LANGUAGE_NAMES[lang], **labels}, mc)


@family("speaker_identity", skill="speech")
def speaker_identity(rng: np.random.Generator, index: int) -> Item:
    """Two clips: same speaker (voice id) or not; answer "yes"/"no".

    Text equality carries no information: half the pairs of either answer say the same text (a
    same-speaker pair then differs in rate, and in noise). Different speakers are hard negatives half
    the time (same language and gender, another variant), else they differ in gender or language.
    """
    v1 = _pick(rng, tts.VOICES)
    same = bool(rng.random() < 0.5)
    if same:
        v2, contrast = v1, "same"
    else:
        r = rng.random()
        if r < 0.5:
            pool, contrast = [v for v in tts.voices(v1.language, v1.gender) if v != v1], "variant"
        elif r < 0.8:
            pool, contrast = tts.voices(v1.language, "female" if v1.gender == "male" else "male"), "gender"
        else:
            pool, contrast = [v for v in tts.VOICES if v.language != v1.language], "language"
        v2 = _pick(rng, pool)
    t1 = _native_text(rng, v1.language)
    # P(same text) is 1/2 for both answers: different-language pairs (1/5 of the negatives) never share
    # a text, so same-language negatives share theirs with probability 5/8.
    p_same_text = 0.5 if same else 0.625 if v1.language == v2.language else 0.0
    same_text = bool(rng.random() < p_same_text)
    t2 = t1 if same_text else _native_text(rng, v2.language)
    # A speaker keeps their pitch; the rate is drawn per clip (people speed up and slow down).
    u1 = _say(rng, t1, v1)
    u2 = _say(rng, t2, v2, pitch=u1.pitch if same else None)
    w1, l1 = _single(rng, u1)
    w2, l2 = _single(rng, u2)
    answer = YES if same else NO
    return _item("speaker_identity", [w1, w2], _pick(rng, PROMPTS["speaker_verification"]), answer,
                 "speaker_verification",
                 {"same_speaker": same, "voices": [v1.id, v2.id], "same_text": t1 == t2, "contrast": contrast,
                  "clips": [l1, l2]})


# ----------------------------------------------------------------------------- two talkers


def fmt_segment(seg: dict) -> str:
    """One diarized line: ``[start-end] gender: text`` with times to 2 decimals."""
    return f"[{seg['start_s']:.2f}-{seg['end_s']:.2f}] {seg['gender']}: {seg['text']}"


@family("multi_talker", skill="speech")
def multi_talker(rng: np.random.Generator, index: int) -> Item:
    """A male and a female English voice saying different sentences, partly overlapping.

    The second voice's speech starts ``overlap_s`` before the first one's speech ends (overlap drawn
    from ``MIN_OVERLAP_S`` to half the shorter utterance). Three questions: who said a phrase (a subject, object
    or place phrase found only in that speaker's sentence), who started first, and a diarized
    transcript with speech bounds to 2 decimals.
    """
    first_gender = "male" if rng.random() < 0.5 else "female"
    second_gender = "female" if first_gender == "male" else "male"
    text1, parts1 = _sentence(rng)
    text2, parts2 = _sentence(rng, avoid=parts1)
    u1 = _say(rng, text1, _en_voice(rng, first_gender))
    u2 = _say(rng, text2, _en_voice(rng, second_gender))
    lead_n = round(float(rng.uniform(*LEAD_RANGE_S)) * SAMPLE_RATE)
    lo = round(MIN_OVERLAP_S * SAMPLE_RATE)
    overlap_n = int(rng.integers(lo, max(lo + 1, min(u1.off - u1.on, u2.off - u2.on) // 2)))
    # Place clip 2 so that its speech onset lands overlap_n samples before clip 1's speech offset.
    start2 = lead_n + u1.off - overlap_n - u2.on
    if start2 < 0:  # only if clip 2's leading margin exceeds everything before it; shift both right
        lead_n, start2 = lead_n - start2, 0
    tail_n = round(float(rng.uniform(*TAIL_RANGE_S)) * SAMPLE_RATE)
    end_n = max(lead_n + len(u1.audio), start2 + len(u2.audio)) + tail_n
    wave, labels = _render(rng, [(u1, lead_n), (u2, start2)], end_n)
    segs = labels["segments"]
    labels["overlap_s"] = overlap_n / SAMPLE_RATE  # shifting both clips right (above) keeps it
    labels["first_speaker"] = first_gender

    variant = _pick(rng, ("who_said", "who_said", "who_first", "diarization"))
    if variant == "who_said":
        k = int(rng.integers(2))
        own, other_text = (parts1, text2) if k == 0 else (parts2, text1)
        # a phrase of one slot that occurs nowhere in the other sentence (slots are drawn distinct)
        slots = [s for s in ("subject", "object", "place") if own[s] not in other_text.lower()]
        phrase = own[_pick(rng, slots)]
        gender = (first_gender, second_gender)[k]
        question = _pick(rng, PROMPTS["who_said"]).format(phrase=phrase)
        answer = SPEAKER_ANSWERS[gender]
        labels.update(phrase=phrase, phrase_speaker=gender)
    elif variant == "who_first":
        question, answer = _pick(rng, PROMPTS["who_first"]), SPEAKER_ANSWERS[first_gender]
    else:
        question = _pick(rng, PROMPTS["diarization"])
        answer = "\n".join(fmt_segment(s) for s in sorted(segs, key=lambda s: s["start_s"]))
    return _item("multi_talker", [wave], question, answer, variant, labels)


# ----------------------------------------------------------------------------- text for tokenizers


def all_text() -> Iterator[str]:
    """Every fixed string the speech families can put in a conversation (numbers spelled out too)."""
    yield from SPEECH_VOCAB
    yield from COMMAND_WORDS
    yield from SUBJECTS + VERBS + OBJECTS + PLACES + TIMES
    for phrases in PHRASES.values():
        yield from phrases
    for entry in LEXICON:
        yield from entry.values()
    yield from LANGUAGE_NAMES.values()
    for lang in LEXICON_LANGUAGES:
        yield from (tts.number_words(n, lang) for n in range(101))
    for templates in PROMPTS.values():
        yield from templates  # with their {lang}/{src}/{phrase} fields unfilled
    yield from MC_INSTRUCTIONS
    yield from SPEAKER_ANSWERS.values()
    yield from (YES, NO, "male", "female")
