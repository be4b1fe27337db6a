"""Training samples: one AF3-format conversation plus its audio -> model inputs and labels.

One source of truth. A training sample is rendered with the checkpoint's own chat template (the same
`render_chat_template` and `Processor` that inference uses), so the model is trained on exactly the
token layout it will be prompted with: system turn (the template's default one when none is given),
`<|im_start|>role\\n ... <|im_end|>\\n` turns, `<|sound_bos|> <sound>xN <|sound_eos|>` audio runs. No
ChatML is written here by hand.

Labels. Only what the assistant says is a target: for every assistant turn i we render
`messages[:i]` with the generation prompt (`P_i`, what the model sees before it starts answering) and
`messages[:i+1]` without it (`Q_i`), tokenize both, and check that `P_i` is a token prefix of `Q_i` and
`Q_i` a token prefix of the whole conversation. The tokens `Q_i[len(P_i):]` are the answer as the
template writes it; we label them up to and including the last `<|im_end|>` (so the model learns to
stop) and leave what follows it (the template's newline) unlabelled, because at inference generation
stops at `<|im_end|>` and never produces it. Deriving spans from the template rather than from
searching for `<|im_start|>assistant` keeps this correct for any template that only appends; a
template that rewrites earlier turns once later ones exist (e.g. one that strips reasoning from
history) fails the prefix check and the sample is dropped with reason `template_not_prefix`.
Prefixes are tokenized with each `<sound>` still a single token (it is an added special token, so
the tokenizer cuts the text at it); the labels are then expanded along with the placeholders, and
the expansion is checked against the processor's own output id for id.

Placeholders. AF3 data writes `<sound>` (one audio) or `<sound-1>`, `<sound-2>`, ... (several; 1-based
indices into the record's `sound` list). The manifest module owns that syntax
(`manifest.conversations_to_sound_tokens`, so loader and manifest checks agree): each placeholder
becomes `<sound>` and the audios are reordered to the placeholders' order of appearance across the
conversation. Whatever it refuses (counts that differ, a missing or repeated `<sound-k>`, mixed styles,
a placeholder outside a human turn) drops the sample as `placeholder_mismatch`.

Caps (`StageCaps`, one per training stage). `max_audio_s` applies to each audio separately: a longer
clip either drops the sample (`policy="drop"`) or is cut to exactly `max_audio_s` seconds of samples
(`policy="truncate"`; note that an answer about the cut-off part then becomes a wrong target, which
is why "drop" is the default). The cap is also bounded by the model's own limit
(`processor.max_windows` x 30 s). A sample whose total token count (audio tokens included) exceeds
`max_tokens` is always dropped: cutting text would cut answers, and cutting audio further would leave
answers about audio the model never heard. The length test runs before any mel features are
computed, so rejected long samples cost only text tokenization.

Audio tails. A last 30-s window holding 320 samples (20 ms) or fewer has fewer than 3 mel frames and
yields zero encoder tokens. Such a window has no `<sound>` run to belong to, so the map from runs to
windows (RoTE window indices, `model.rote.window_index_per_row`) becomes ambiguous once another audio
follows it in the same prompt or packed row. We trim that sub-20-ms tail, so every window yields at
least one token; an audio that short in total is dropped (`bad_audio`).

Invariant (checked on every sample, never dropped silently): the number of `<sound>` ids equals the
number of audio tokens the windows produce, `sum(num_tokens_from_frames(mask.sum(-1)))`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from afnext import audio as A
from afnext.data.manifest import PlaceholderError, conversations_to_sound_tokens
from afnext.model.afnext import IGNORE_INDEX
from afnext.processor import Processor, render_chat_template

ROLES = {"human": "user", "gpt": "assistant", "system": "system"}  # AF3 "from" -> chat-template role
_AF3_NAMES = {"user": "human", "assistant": "gpt"}  # OpenAI-style names some exports use
END_OF_TURN = "<|im_end|>"

# Drop reasons (the keys DropCounter reports).
AUDIO_TOO_LONG = "audio_too_long"
TOO_MANY_TOKENS = "too_many_tokens"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
BAD_AUDIO = "bad_audio"
BAD_CONVERSATION = "bad_conversation"
NO_ANSWER = "no_answer"
TEMPLATE_NOT_PREFIX = "template_not_prefix"

_MIN_TAIL_SAMPLES = 2 * A.HOP_LENGTH + 1  # >= 3 mel frames, the fewest that give one encoder token


@dataclass(frozen=True)
class StageCaps:
    """Per-stage limits: longest audio clip (s), longest sample (tokens), and what to do with long audio."""

    max_audio_s: float
    max_tokens: int
    policy: str = "drop"  # "drop" | "truncate" (applies to audio only; over-long samples always drop)

    def __post_init__(self):
        if self.policy not in ("drop", "truncate"):
            raise ValueError(f"StageCaps.policy must be 'drop' or 'truncate', got {self.policy!r}")
        if not self.max_audio_s > 0 or self.max_tokens <= 0:
            raise ValueError(f"StageCaps limits must be positive, got {self.max_audio_s} s, {self.max_tokens} tokens")


@dataclass(frozen=True)
class Dropped:
    """Why a record produced no sample; `reason` is one of the module's drop-reason constants."""

    reason: str
    detail: str = ""


class DropCounter:
    """Counts dropped records by reason and keeps the first detail of each reason as an example."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, dropped: Dropped) -> None:
        self.counts[dropped.reason] += 1
        self.examples.setdefault(dropped.reason, dropped.detail)

    def keep(self, result: "TrainSample | Dropped") -> "TrainSample | None":
        """Count `result` if it is a `Dropped` and return None; otherwise return the sample unchanged."""
        if isinstance(result, Dropped):
            self.add(result)
            return None
        return result

    def merge(self, other: "DropCounter") -> None:
        self.counts.update(other.counts)
        for reason, detail in other.examples.items():
            self.examples.setdefault(reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __getitem__(self, reason: str) -> int:
        return self.counts[reason]

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def __repr__(self) -> str:
        return f"DropCounter({self.as_dict()})"


@dataclass
class TrainSample:
    """One tokenized training sample (unbatched).

    input_ids, labels: (T,) int64, aligned (not shifted; the loss shifts). labels are IGNORE_INDEX
    except assistant answers and the `<|im_end|>` closing each of them.
    input_features (W, 128, 3000) float32 and input_features_mask (W, 3000) int32: the windows of every
    audio, in the order of their placeholders (W may be 0 for a text-only sample).
    audio_seconds: duration of each bound audio in placeholder order, after any truncation.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    input_features: torch.Tensor
    input_features_mask: torch.Tensor
    n_audio_tokens: int
    audio_seconds: list[float] = field(default_factory=list)
    id: str | None = None
    family: str | None = None
    truncated: bool = False
    grounds: list = field(default_factory=list)  # grounded answers (afnext.train.grounding.Ground), for its loss
    aligns: list = field(default_factory=list)  # transcript words and their audio (afnext.train.align.WordAlign)

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def n_tokens(self) -> int:
        return len(self)

    @property
    def n_label_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    @property
    def total_audio_seconds(self) -> float:
        return float(sum(self.audio_seconds))


def encode_sample(processor: Processor, conversations: list[dict], waves, caps: StageCaps, *,
                  system: str | None = None, sample_id: str | None = None,
                  family: str | None = None) -> TrainSample | Dropped:
    """Build one training sample, or say why the record cannot become one.

    conversations: AF3 turns `[{"from": "human"|"gpt"(|"system"), "value": str}, ...]`.
    waves: the record's audios in manifest order, 16-kHz mono float32 arrays.
    system: system prompt; None keeps the one in the conversation, else the template's default.
    Trailing user turns (nothing to learn from) are removed; a record with no assistant turn is dropped.
    """
    turns = _af3_turns(conversations)
    if isinstance(turns, Dropped):
        return Dropped(turns.reason, f"{sample_id}: {turns.detail}")
    waves = [np.asarray(w, dtype=np.float32) for w in (waves or [])]
    # Bind on the whole record (that is what its placeholders refer to), then cut trailing user turns
    # together with the audios only they use.
    try:
        turns, audio_order = conversations_to_sound_tokens(turns, len(waves))
    except PlaceholderError as e:
        return Dropped(PLACEHOLDER_MISMATCH, f"{sample_id}: {e}")
    messages = _to_messages(turns, system)
    if isinstance(messages, Dropped):
        return Dropped(messages.reason, f"{sample_id}: {messages.detail}")
    while messages and messages[-1]["role"] != "assistant":
        audio_order = audio_order[: len(audio_order) - messages.pop()["content"].count("<sound>")]
    if not any(m["role"] == "assistant" for m in messages):
        return Dropped(NO_ANSWER, f"{sample_id}: no assistant turn")

    audios, truncated = [], False
    for k in audio_order:
        wave = _cap_audio(waves[k], k, caps, processor)
        if isinstance(wave, Dropped):
            return Dropped(wave.reason, f"{sample_id}: {wave.detail}")
        truncated |= len(wave) < len(waves[k])
        audios.append(wave)

    # Text side first (cheap): ids with one <sound> per audio, and their label mask.
    spans = _label_text_ids(processor, messages)
    if isinstance(spans, Dropped):
        return Dropped(spans.reason, f"{sample_id}: {spans.detail}")
    text, text_ids, text_labels = spans
    n_tokens = [A.num_audio_tokens(len(w), processor.max_windows) for w in audios]
    wrap = (processor.audio_bos_token_id is not None) + (processor.audio_eos_token_id is not None)
    expected_len = len(text_ids) + sum(n + wrap - 1 for n in n_tokens)
    if expected_len > caps.max_tokens:
        return Dropped(TOO_MANY_TOKENS, f"{sample_id}: {expected_len} tokens > {caps.max_tokens}")

    # Audio side: the processor expands the placeholders and computes the features, as at inference.
    try:
        enc = processor(text, audio=[(w, A.SAMPLE_RATE) for w in audios] or None)
    except A.AudioError as e:
        return Dropped(BAD_AUDIO, f"{sample_id}: {e}")
    input_ids = enc["input_ids"][0]
    ids, labels = _expand_labels(processor, text_ids, text_labels, n_tokens)
    if ids != input_ids.tolist():
        raise AssertionError(f"{sample_id}: the processor's placeholder expansion differs from the labelled ids; "
                             "labels would be misaligned")
    if audios:
        features, mask = enc["input_features"], enc["input_features_mask"]
    else:
        features = torch.zeros(0, A.N_MELS, A.WINDOW_FRAMES, dtype=torch.float32)
        mask = torch.zeros(0, A.WINDOW_FRAMES, dtype=torch.int32)
    sample = TrainSample(
        input_ids=input_ids.clone(), labels=torch.tensor(labels, dtype=torch.long), input_features=features,
        input_features_mask=mask, n_audio_tokens=sum(n_tokens),
        audio_seconds=[A.audio_duration_s(w) for w in audios], id=sample_id, family=family, truncated=truncated)
    check_sample(sample, processor.audio_token_id)
    return sample


def check_sample(sample: TrainSample, audio_token_id: int) -> None:
    """Raise AssertionError unless the sample's placeholders, windows and labels agree."""
    n_slots = int((sample.input_ids == audio_token_id).sum())
    frames = sample.input_features_mask.sum(-1).tolist()
    n_encoder = sum(A.num_tokens_from_frames(int(f)) for f in frames)
    if not (n_slots == n_encoder == sample.n_audio_tokens):
        raise AssertionError(f"{sample.id}: {n_slots} <sound> tokens, {n_encoder} encoder tokens from "
                             f"{len(frames)} windows, n_audio_tokens={sample.n_audio_tokens}")
    if sample.labels.shape != sample.input_ids.shape:
        raise AssertionError(f"{sample.id}: labels {tuple(sample.labels.shape)} vs ids {tuple(sample.input_ids.shape)}")
    if bool((sample.labels[sample.input_ids == audio_token_id] != IGNORE_INDEX).any()):
        raise AssertionError(f"{sample.id}: an audio placeholder is labelled")


# --- conversation ----------------------------------------------------------------------------------------
def _af3_turns(conversations) -> list[dict] | Dropped:
    """Validated `{"from", "value"}` turns with AF3 role names."""
    turns = []
    for i, turn in enumerate(conversations or []):
        name = turn.get("from", turn.get("role")) if isinstance(turn, dict) else None
        name = _AF3_NAMES.get(name, name)
        value = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if name not in ROLES or not isinstance(value, str):
            return Dropped(BAD_CONVERSATION, f"turn {i}: {turn!r:.80}")
        if name == "system" and i != 0:
            return Dropped(BAD_CONVERSATION, f"turn {i}: a system turn after the first")
        turns.append({"from": name, "value": value})
    return turns


def _to_messages(turns: list[dict], system: str | None) -> list[dict] | Dropped:
    messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]
    if system is not None:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
    body = [m for m in messages if m["role"] != "system"]
    if not body or body[0]["role"] != "user":
        # An answer needs a question before it: the generation prompt of turn 0 would have no turn to follow.
        return Dropped(BAD_CONVERSATION, "the first non-system turn is not a user turn")
    return messages


# --- audio ----------------------------------------------------------------------------------------------
def _cap_audio(wave: np.ndarray, k: int, caps: StageCaps, processor: Processor) -> np.ndarray | Dropped:
    if wave.ndim != 1:
        return Dropped(BAD_AUDIO, f"audio {k}: expected 1-D 16-kHz samples, got shape {wave.shape}")
    cap_s = min(float(caps.max_audio_s), processor.max_windows * A.WINDOW_SECONDS)
    duration = A.audio_duration_s(wave)
    if duration > cap_s:
        if caps.policy == "drop":
            return Dropped(AUDIO_TOO_LONG, f"audio {k}: {duration:.2f} s > {cap_s:g} s")
        wave = wave[: int(round(cap_s * A.SAMPLE_RATE))]
    tail = len(wave) % A.WINDOW_SAMPLES
    if 0 < tail < _MIN_TAIL_SAMPLES:
        if len(wave) < A.WINDOW_SAMPLES:
            return Dropped(BAD_AUDIO, f"audio {k}: {len(wave)} samples give no audio token")
        wave = wave[: len(wave) - tail]
    return wave


# --- labels ---------------------------------------------------------------------------------------------
def _render(processor: Processor, messages: list[dict], add_generation_prompt: bool) -> str:
    return render_chat_template(processor.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                **processor.tokenizer.special_tokens_map)


def _label_text_ids(processor: Processor, messages: list[dict]) -> tuple[str, list[int], list[bool]] | Dropped:
    """Full rendered text, its ids (one `<sound>` per audio), and which ids are targets."""
    tok = processor.tokenizer
    end_id = tok.token_to_id(END_OF_TURN)
    end_id = tok.eos_token_id if end_id is None else end_id
    text = _render(processor, messages, add_generation_prompt=False)
    ids = tok.encode(text)
    is_target = [False] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tok.encode(_render(processor, messages[:i], add_generation_prompt=True))
        through = tok.encode(_render(processor, messages[: i + 1], add_generation_prompt=False))
        if through[: len(before)] != before or ids[: len(through)] != through:
            return Dropped(TEMPLATE_NOT_PREFIX, f"assistant turn {i} is not a token prefix extension")
        answer = through[len(before):]
        # Label through the closing tag; what the template writes after it is never generated.
        ends = [j for j, t in enumerate(answer) if t == end_id]
        stop = len(before) + (ends[-1] + 1 if ends else len(answer))
        for j in range(len(before), stop):
            is_target[j] = True
    return text, ids, is_target


def _expand_labels(processor: Processor, text_ids: list[int], is_target: list[bool],
                   n_tokens: list[int]) -> tuple[list[int], list[int]]:
    """Expand each `<sound>` id to its run (bos, N x sound, eos) and build labels alongside. Returns the
    expanded ids too, which the caller compares with the processor's output to prove the alignment."""
    sound, bos, eos = processor.audio_token_id, processor.audio_bos_token_id, processor.audio_eos_token_id
    counts = iter(n_tokens)
    ids, labels = [], []
    for t, target in zip(text_ids, is_target):
        if t == sound:
            run = ([bos] if bos is not None else []) + [sound] * next(counts) + ([eos] if eos is not None else [])
            ids += run
            labels += [IGNORE_INDEX] * len(run)
        else:
            ids.append(t)
            labels.append(t if target and t not in processor.audio_token_ids else IGNORE_INDEX)
    return ids, labels
