"""AF3-format manifests: read, write, validate.

NVIDIA's Audio Flamingo 3 data format, which users already have, is one JSON object per example::

    {"id": "clotho_aqa_00012",
     "sound": "audio/00012.wav",            # or a list of paths for several audios
     "duration": 14.2,                      # seconds; for a list: a list (one per sound) or the total
     "conversations": [{"from": "human", "value": "<sound>\\nWhat is making the noise?"},
                       {"from": "gpt", "value": "A dog barking."}],
     "task": "AQA", ...}                     # any other field is kept verbatim in ``Record.extra``

With several audios the human turns name them ``<sound-1>``, ``<sound-2>``, ... (``<sound-k>`` is the
k-th entry of ``sound``); plain repeated ``<sound>`` is also accepted and binds the audios in order.

File layout. A manifest is either a JSON list of records or JSONL (one record per line). The kind is
detected from the content, not the extension: a file whose first non-blank character is ``[`` is a JSON
list, anything else is read as JSONL (a file holding one pretty-printed object is read as one record).
``Record.row`` is where the record sits in its file, 1-based: the line number for JSONL (blank lines keep
the numbering, so ``file:row`` opens at the right line in an editor) and the item index for a JSON list.
JSONL is streamed line by line, so a malformed line is reported and reading goes on; a JSON list must parse
as a whole, so a syntax error there is a problem of the whole file.

Paths. A relative ``sound`` path resolves against the manifest's own directory, or against ``audio_root``
when one is given (the AF3 registry's "media dir"); absolute paths and ``~`` are taken as they are. Records
remember the strings they were written with, so writing a manifest back where its paths still resolve the
same way reproduces them unchanged; a path that would resolve differently from the new location is written
absolute instead.

Validation. ``iter_manifest`` only checks what a ``Record`` needs (types and required fields); semantic
checks live in ``check_record`` (audio present and decodable, placeholders, turn order, durations, ids) and
``check_manifest`` runs them over every row, never stopping at the first bad one, and returns a ``Report``.
Audio is probed by decoding it with ``afnext.audio.load_audio``, the exact code the training loader runs,
so a file that passes the check is one the loader can read. Container headers alone do not catch corrupt
payloads (random bytes named ``.flac`` open as FLAC with an unknown length), so the cheaper
``probe_audio="header"`` only opens the container and reads its stated length, decoding only when the
header states none; it is for quick passes over data that is known to be intact. Each distinct file is
probed once per manifest (QA sets reuse one clip for many questions).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Literal

from afnext.audio import AudioError, audio_duration_s, load_audio

# Problem kinds. Structural ones come from parsing a row; the rest from check_record / check_manifest.
BAD_JSON = "bad_json"  # the row (or a JSON-list file) is not valid JSON / UTF-8
BAD_ROW = "bad_row"  # the row is valid JSON but not an object
MISSING_FIELD = "missing_field"  # a required field (id, conversations) is absent
BAD_FIELD = "bad_field"  # a field has the wrong type or shape
MISSING_AUDIO = "missing_audio"
CORRUPT_AUDIO = "corrupt_audio"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
BAD_ROLES = "bad_roles"  # turns are not human, gpt, human, gpt, ... ending with gpt
EMPTY_TURN = "empty_turn"
DURATION_MISMATCH = "duration_mismatch"
DUPLICATE_ID = "duplicate_id"
TOO_LONG = "too_long"

STRUCTURAL_KINDS = frozenset({BAD_JSON, BAD_ROW, MISSING_FIELD, BAD_FIELD})

_CORE_FIELDS = ("id", "sound", "duration", "conversations")
_PLACEHOLDER = re.compile(r"<sound(?:-(\d+))?>")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")

ProbeMode = Literal["decode", "header"] | bool


class ManifestError(ValueError):
    """A manifest (or one of its rows, in strict mode) cannot be read; the message starts with file:row."""


class PlaceholderError(ValueError):
    """A prompt's ``<sound>`` / ``<sound-k>`` placeholders cannot be bound to its audios."""


@dataclass
class Problem:
    """One problem with one row. ``row`` is None for problems of the whole file."""

    kind: str
    message: str
    row: int | None = None
    id: str | None = None
    manifest: Path | None = None

    @property
    def location(self) -> str:
        name = str(self.manifest) if self.manifest is not None else "<manifest>"
        return f"{name}:{self.row}" if self.row is not None else name

    def __str__(self) -> str:
        ident = f" [{self.id}]" if self.id else ""
        return f"{self.location}{ident}: {self.kind}: {self.message}"

    def to_dict(self) -> dict:
        return {"row": self.row, "id": self.id, "kind": self.kind, "message": self.message}


RowProblem = Problem  # what iter_manifest yields for a row it cannot turn into a Record


@dataclass
class Record:
    """One AF3 example.

    ``durations`` keeps the file's form: a float is the total length in seconds (for one sound, its
    length), a list gives one length per sound, None means the file stated none. ``extra`` holds every
    other top-level field, in file order. ``row`` is the 1-based line (JSONL) or item index (JSON list).
    """

    id: str
    sounds: list[Path]
    durations: float | list[float] | None
    conversations: list[dict]
    extra: dict = field(default_factory=dict)
    row: int = 0
    manifest: Path | None = field(default=None, compare=False, repr=False)
    # How the file wrote "sound" (the strings, and str vs list), so writing back reproduces it.
    sound_refs: list[str] | None = field(default=None, compare=False, repr=False)
    sound_as_list: bool | None = field(default=None, compare=False, repr=False)
    base_dir: Path | None = field(default=None, compare=False, repr=False)

    @property
    def total_duration(self) -> float | None:
        """Stated length of all sounds together, in seconds."""
        if isinstance(self.durations, list):
            return float(sum(self.durations))
        return self.durations

    @property
    def sound_durations(self) -> list[float] | None:
        """Stated length of each sound, or None when only a total is known for several sounds."""
        if isinstance(self.durations, list):
            return list(self.durations)
        if self.durations is not None and len(self.sounds) == 1:
            return [self.durations]
        return None

    @property
    def location(self) -> str:
        return f"{self.manifest if self.manifest is not None else '<manifest>'}:{self.row}"

    @classmethod
    def from_dict(cls, obj, *, base_dir: str | os.PathLike | None = None, row: int = 0,
                  manifest: Path | None = None) -> "Record":
        """Parse one AF3 object; relative sound paths resolve against ``base_dir`` (default: cwd)."""
        parsed = _parse_row(obj, row, Path(base_dir or ".").absolute(), manifest)
        if isinstance(parsed, Problem):
            raise ManifestError(str(parsed))
        return parsed

    def to_dict(self, base_dir: str | os.PathLike | None = None) -> dict:
        """The AF3 object. Sound paths keep their original strings when they still resolve to the same file
        from ``base_dir`` (default: the directory they were read against); otherwise the resolved path (absolute
        for every record read from a file) is written."""
        base = Path(base_dir).absolute() if base_dir is not None else self.base_dir
        refs = []
        for i, sound in enumerate(self.sounds):
            ref = self.sound_refs[i] if self.sound_refs is not None and i < len(self.sound_refs) else None
            if ref is not None and base is not None and _resolve(ref, base) == sound:
                refs.append(ref)
            else:  # read paths are absolute; a relative one built in code is written as given
                refs.append(str(sound))
        as_list = self.sound_as_list if self.sound_as_list is not None else len(refs) != 1
        out: dict = {"id": self.id}
        if refs or as_list:
            out["sound"] = refs if as_list else refs[0]
        if self.durations is not None:
            out["duration"] = list(self.durations) if isinstance(self.durations, list) else self.durations
        out["conversations"] = [dict(turn) for turn in self.conversations]
        out.update(self.extra)
        return out


# ----------------------------------------------------------------------------- reading


def _resolve(ref: str, base: Path) -> Path:
    p = Path(os.path.expanduser(ref))
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _parse_row(obj, row: int, base: Path, manifest: Path | None) -> Record | Problem:
    """Turn one decoded JSON value into a Record, or say why it cannot be one."""
    def bad(kind, msg, ident=None):
        return Problem(kind, msg, row, ident, manifest)

    if not isinstance(obj, dict):
        return bad(BAD_ROW, f"expected a JSON object, got {type(obj).__name__}")
    ident = obj.get("id")
    shown_id = ident if isinstance(ident, str) else None
    if "id" not in obj:
        return bad(MISSING_FIELD, "missing 'id'")
    if not isinstance(ident, str) or not ident:
        return bad(BAD_FIELD, f"'id' must be a non-empty string, got {ident!r}")

    sound = obj.get("sound")
    if "sound" not in obj:  # text-only rows are legal; placeholders without sounds are caught by check_record
        refs, as_list = [], False
    elif isinstance(sound, str):
        refs, as_list = [sound], False
    elif isinstance(sound, list):
        refs, as_list = sound, True
    else:
        return bad(BAD_FIELD, f"'sound' must be a path or a list of paths, got {type(sound).__name__}", shown_id)
    if any(not isinstance(r, str) or not r.strip() for r in refs):
        return bad(BAD_FIELD, f"'sound' entries must be non-empty strings, got {sound!r}", shown_id)

    duration = obj.get("duration")
    if duration is None:
        durations = None
    elif _is_number(duration):
        durations = duration
    elif isinstance(duration, list) and all(_is_number(d) for d in duration):
        if len(duration) != len(refs):
            return bad(BAD_FIELD, f"'duration' lists {len(duration)} values for {len(refs)} sound(s)", shown_id)
        durations = list(duration)
    else:
        return bad(BAD_FIELD, f"'duration' must be seconds or a list of seconds, got {duration!r}", shown_id)
    values = durations if isinstance(durations, list) else [durations] if durations is not None else []
    if any(not math.isfinite(d) or d < 0 for d in values):
        return bad(BAD_FIELD, f"'duration' must be finite and >= 0, got {duration!r}", shown_id)

    if "conversations" not in obj:
        return bad(MISSING_FIELD, "missing 'conversations'", shown_id)
    convs = obj["conversations"]
    if not isinstance(convs, list):
        return bad(BAD_FIELD, f"'conversations' must be a list, got {type(convs).__name__}", shown_id)
    for t, turn in enumerate(convs, 1):
        if not isinstance(turn, dict):
            return bad(BAD_FIELD, f"turn {t} must be an object, got {type(turn).__name__}", shown_id)
        for key in ("from", "value"):
            if not isinstance(turn.get(key), str):
                what = "missing" if key not in turn else f"not a string ({type(turn[key]).__name__})"
                return bad(BAD_FIELD, f"turn {t}: '{key}' is {what}", shown_id)

    return Record(
        id=ident,
        sounds=[_resolve(r, base) for r in refs],
        durations=durations,
        conversations=convs,
        extra={k: v for k, v in obj.items() if k not in _CORE_FIELDS},
        row=row,
        manifest=manifest,
        sound_refs=list(refs),
        sound_as_list=as_list,
        base_dir=base,
    )


def _first_char(path: Path) -> str:
    """First non-blank character of the file ('' if empty), skipping a UTF-8 byte-order mark."""
    with open(path, "rb") as f:
        head = f.read(4096)
        while head:
            text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
            if text:
                return chr(text[0])
            head = f.read(4096)
    return ""


def detect_format(path: str | os.PathLike) -> Literal["json", "jsonl"]:
    """'json' for a JSON list (first non-blank character '['), else 'jsonl'."""
    return "json" if _first_char(Path(path)) == "[" else "jsonl"


def _json_error(e: json.JSONDecodeError) -> str:
    return f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"


def iter_manifest(path: str | os.PathLike, *, audio_root: str | os.PathLike | None = None,
                  strict: bool = False) -> Iterator[tuple[Record | None, Problem | None]]:
    """Yield ``(record, None)`` for each good row and ``(None, problem)`` for each row that is not a record.

    With ``strict=True`` the first bad row raises ``ManifestError`` instead. A JSON-list file that does not
    parse at all always raises (no row can be located in it). Missing files raise ``FileNotFoundError``.
    """
    path = Path(path)
    base = Path(audio_root).expanduser().absolute() if audio_root is not None else path.absolute().parent

    def emit(parsed):
        if isinstance(parsed, Problem):
            if strict:
                raise ManifestError(str(parsed))
            return None, parsed
        return parsed, None

    if detect_format(path) == "json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as e:
            raise ManifestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: {_json_error(e)}") from None
        if not isinstance(data, list):  # '[' then valid JSON is always a list; kept for clarity
            raise ManifestError(f"{path}: expected a JSON list of records")
        for i, obj in enumerate(data, 1):
            yield emit(_parse_row(obj, i, base, path))
        return

    if _single_object(path):  # one pretty-printed object: a single record at row 1
        yield emit(_parse_row(json.loads(path.read_bytes().decode("utf-8-sig")), 1, base, path))
        return
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8").rstrip("\r\n"))  # so an unclosed string says so
            except UnicodeDecodeError as e:
                yield emit(Problem(BAD_JSON, f"not UTF-8 text ({e.reason} at byte {e.start})", lineno, None, path))
                continue
            except json.JSONDecodeError as e:
                yield emit(Problem(BAD_JSON, f"invalid JSON at column {e.colno}: {e.msg}", lineno, None, path))
                continue
            yield emit(_parse_row(obj, lineno, base, path))


def _single_object(path: Path) -> bool:
    """True for a file holding one JSON object spread over several lines (not JSONL, but unambiguous).

    Only checked when the first line alone is not valid JSON, so ordinary JSONL costs one extra parse."""
    with open(path, "rb") as f:
        first = b""
        for raw in f:
            if raw.strip():
                first = raw.removeprefix(b"\xef\xbb\xbf")
                break
        if not first:
            return False
        try:
            json.loads(first)
            return False
        except (ValueError, UnicodeDecodeError):
            pass
    try:
        return isinstance(json.loads(path.read_bytes().decode("utf-8-sig")), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def read_manifest(path: str | os.PathLike, *, audio_root: str | os.PathLike | None = None,
                  strict: bool = True) -> list[Record]:
    """All records of a manifest. ``strict`` raises ``ManifestError`` ("file:row: kind: problem") on the first
    row that is not a record; ``strict=False`` skips such rows (use ``iter_manifest`` to see them)."""
    return [rec for rec, _ in iter_manifest(path, audio_root=audio_root, strict=strict) if rec is not None]


# ----------------------------------------------------------------------------- writing


def write_manifest(path: str | os.PathLike, records: Iterable[Record | dict], jsonl: bool | None = None, *,
                   audio_root: str | os.PathLike | None = None) -> Path:
    """Write records atomically (a temp file in the same directory, then rename).

    ``jsonl=None`` picks JSONL for ``.jsonl``/``.ndjson`` names and a JSON list otherwise. Sound paths are
    written relative to ``audio_root`` (default: the new file's directory) when their original strings still
    resolve to the same files from there, else absolute. Plain dicts are written as given.
    """
    path = Path(path)
    if jsonl is None:
        jsonl = path.suffix.lower() in _JSONL_SUFFIXES
    base = Path(audio_root).expanduser().absolute() if audio_root is not None else path.absolute().parent
    objs = (r.to_dict(base) if isinstance(r, Record) else r for r in records)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with io.open(fd, "w", encoding="utf-8", newline="\n") as f:
            if jsonl:
                for obj in objs:
                    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            else:
                f.write("[")
                for i, obj in enumerate(objs):
                    # Indent items inside the list; json.dumps escapes newlines in strings, so every "\n"
                    # here is structural.
                    f.write(("," if i else "") + "\n  " + json.dumps(obj, ensure_ascii=False, indent=2)
                            .replace("\n", "\n  "))
                f.write("\n]\n")
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode an ordinary open() would (or keep the old file's).
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


# ----------------------------------------------------------------------------- placeholders


def _scan_placeholders(conversations: list[dict]) -> tuple[list[int | None], list[str]]:
    """Placeholders of the human turns in order (k for <sound-k>, None for <sound>), and problems with gpt turns."""
    found: list[int | None] = []
    gpt_problems = []
    for t, turn in enumerate(conversations, 1):
        matches = [None if m.group(1) is None else int(m.group(1)) for m in _PLACEHOLDER.finditer(turn["value"])]
        if turn["from"] == "human":
            found += matches
        elif matches:
            gpt_problems.append(f"turn {t} ({turn['from']}) contains an audio placeholder")
    return found, gpt_problems


def _binding(found: list[int | None], n_sounds: int) -> tuple[list[int] | None, str | None]:
    """Audio order for the placeholders in ``found``, or why they cannot be bound to ``n_sounds`` audios."""
    if len(found) != n_sounds:
        return None, f"{len(found)} placeholder(s) for {n_sounds} sound(s)"
    indexed = [k for k in found if k is not None]
    if not indexed:
        return list(range(n_sounds)), None
    if len(indexed) != len(found):
        return None, "mixes <sound> and <sound-k> placeholders"
    out_of_range = sorted({k for k in indexed if not 1 <= k <= n_sounds})
    if out_of_range:
        return None, f"<sound-{out_of_range[0]}> is outside 1..{n_sounds}"
    repeated = sorted(k for k, c in Counter(indexed).items() if c > 1)
    if repeated:
        return None, f"<sound-{repeated[0]}> appears more than once"
    return [k - 1 for k in indexed], None


def placeholders_to_sound_tokens(text: str, n_sounds: int) -> tuple[str, list[int]]:
    """Rewrite ``<sound-k>`` to ``<sound>`` and return ``(text, order)``.

    The model binds audios to ``<sound>`` tokens in order of appearance, while ``<sound-k>`` names the k-th
    entry of the record's ``sound`` list wherever it appears. So the audios must be fed in the order their
    placeholders appear: ``order[j]`` is the 0-based index into ``sound`` of the audio for the j-th
    ``<sound>`` of the result. "<sound-2> vs <sound-1>" gives ``order == [1, 0]``. Plain ``<sound>``s bind in
    order (``order == [0, 1, ...]``). Raises ``PlaceholderError`` unless there are exactly ``n_sounds``
    placeholders, all plain or all indexed with each k in 1..n_sounds used once.
    """
    found = [None if m.group(1) is None else int(m.group(1)) for m in _PLACEHOLDER.finditer(text)]
    order, why = _binding(found, n_sounds)
    if order is None:
        raise PlaceholderError(why)
    return _PLACEHOLDER.sub("<sound>", text), order


def conversations_to_sound_tokens(conversations: list[dict], n_sounds: int) -> tuple[list[dict], list[int]]:
    """``placeholders_to_sound_tokens`` over a whole conversation: placeholders of all human turns are bound
    together in reading order (a multi-turn chat may bring new audio in a later turn). Returns new turn dicts
    and the audio order; raises ``PlaceholderError`` as the single-text version does, and for placeholders in
    gpt turns (``<sound>`` is a special token that would be taken as an audio slot there)."""
    found, gpt_problems = _scan_placeholders(conversations)
    if gpt_problems:
        raise PlaceholderError(gpt_problems[0])
    order, why = _binding(found, n_sounds)
    if order is None:
        raise PlaceholderError(why)
    turns = [dict(t, value=_PLACEHOLDER.sub("<sound>", t["value"])) if t["from"] == "human" else dict(t)
             for t in conversations]
    return turns, order


# ----------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class ProbeResult:
    """What probing one audio file found: its length (s) or the problem (kind, message)."""

    duration_s: float | None
    kind: str | None = None
    message: str | None = None


def probe_sound(path: str | os.PathLike, mode: ProbeMode = "decode") -> ProbeResult:
    """Check that ``path`` is a readable audio file and measure its length in seconds.

    ``"decode"`` (or True) decodes it with ``load_audio``; ``"header"`` reads the container's stated length
    and decodes only if none is stated; False only checks that the file exists.
    """
    path = Path(path)
    if not path.is_file():
        return ProbeResult(None, MISSING_AUDIO, "not found" if not path.exists() else "not a regular file")
    if mode is False:
        return ProbeResult(None)
    if mode == "header":
        stated = _header_duration(path)
        if stated is not None:
            return ProbeResult(stated)
    try:
        return ProbeResult(audio_duration_s(load_audio(path, name=str(path))))
    except AudioError as e:
        # load_audio's message starts with the name we gave it; keep only the reason.
        return ProbeResult(None, CORRUPT_AUDIO, str(e).removeprefix(f"{path}: "))


def _header_duration(path: Path) -> float | None:
    import av  # local: only the header mode needs PyAV directly

    try:
        with av.open("file:" + str(path.absolute()), mode="r", metadata_errors="ignore") as c:
            if not c.streams.audio:
                return None
            s = c.streams.audio[0]
            if s.duration is not None and s.time_base is not None:
                return float(s.duration * s.time_base)
            if c.duration is not None:
                return c.duration / av.time_base
    except (av.FFmpegError, OSError, ValueError):
        return None  # let the decode path produce the precise error
    return None


def check_record(rec: Record, *, probe_audio: ProbeMode = True, duration_tolerance_s: float = 0.5,
                 max_duration_s: float | None = None, seen_ids: dict[str, int] | None = None,
                 probe_cache: dict[Path, ProbeResult] | None = None) -> list[Problem]:
    """Every problem of one record (an empty list when it is fit for training).

    Checks: each sound exists and decodes (``probe_audio``: True/"decode", "header", or False for existence
    only); human-turn placeholders match the sounds (count, 1..n indices, no mixing, none in gpt turns); turns
    alternate human/gpt starting with human and ending with gpt, none empty; stated durations agree with the
    measured ones within ``duration_tolerance_s`` (per sound when the file gives a list, else the total);
    no sound is longer than ``max_duration_s`` (measured lengths when probed, else stated; with only a total
    stated for several sounds the total is compared, a conservative bound); and, when ``seen_ids`` (id ->
    first row) is passed, the id is new (it is then added).
    """
    problems: list[Problem] = []

    def add(kind, msg):
        problems.append(Problem(kind, msg, rec.row, rec.id, rec.manifest))

    if seen_ids is not None:
        if rec.id in seen_ids:
            add(DUPLICATE_ID, f"id {rec.id!r} already used on row {seen_ids[rec.id]}")
        else:
            seen_ids[rec.id] = rec.row

    # Audio files.
    measured: list[float | None] = []
    mode: ProbeMode = "decode" if probe_audio is True else probe_audio
    for i, sound in enumerate(rec.sounds):
        result = probe_cache.get(sound) if probe_cache is not None else None
        if result is None:
            result = probe_sound(sound, mode)
            if probe_cache is not None:
                probe_cache[sound] = result
        label = f"sound {i + 1} ({sound})" if len(rec.sounds) > 1 else str(sound)
        if result.kind is not None:
            add(result.kind, f"{label}: {result.message}")
        measured.append(result.duration_s)

    # Placeholders.
    found, gpt_problems = _scan_placeholders(rec.conversations)
    for msg in gpt_problems:
        add(PLACEHOLDER_MISMATCH, msg)
    _, why = _binding(found, len(rec.sounds))
    if why:
        add(PLACEHOLDER_MISMATCH, why)

    # Turn roles and order.
    convs = rec.conversations
    if not convs:
        add(BAD_ROLES, "no turns")
    for t, turn in enumerate(convs, 1):
        expected = "human" if t % 2 else "gpt"
        if turn["from"] != expected:
            add(BAD_ROLES, f"turn {t} is from {turn['from']!r}, expected {expected!r} (turns alternate human/gpt)")
            break
    else:
        if convs and convs[-1]["from"] != "gpt":
            add(BAD_ROLES, f"last turn ({len(convs)}) is from {convs[-1]['from']!r}; a conversation must end "
                           "with a gpt answer")
    for t, turn in enumerate(convs, 1):
        if not turn["value"].strip():
            add(EMPTY_TURN, f"turn {t} ({turn['from']}) is empty")

    # Durations: stated vs measured, then the length limit.
    have_all = bool(measured) and all(m is not None for m in measured)
    if have_all and rec.durations is not None:
        per_sound = rec.sound_durations
        if per_sound is not None:
            for i, (stated, got) in enumerate(zip(per_sound, measured)):
                if abs(stated - got) > duration_tolerance_s:
                    which = f"sound {i + 1}" if len(rec.sounds) > 1 else "audio"
                    add(DURATION_MISMATCH, f"{which} is {got:.2f} s, stated {stated:.2f} s "
                                           f"(tolerance {duration_tolerance_s} s)")
        else:
            total = sum(measured)
            if abs(rec.total_duration - total) > duration_tolerance_s:
                add(DURATION_MISMATCH, f"sounds total {total:.2f} s, stated {rec.total_duration:.2f} s "
                                       f"(tolerance {duration_tolerance_s} s)")
    if max_duration_s is not None:
        if have_all:
            lengths, source = measured, "measured"
        elif rec.sound_durations is not None:
            lengths, source = rec.sound_durations, "stated"
        elif rec.total_duration is not None:
            lengths, source = [rec.total_duration], "stated total"
        else:
            lengths, source = [], ""
        longest = max(lengths, default=0.0)
        if longest > max_duration_s:
            add(TOO_LONG, f"{source} length {longest:.2f} s exceeds the maximum of {max_duration_s} s")
    return problems


@dataclass
class Report:
    """Result of ``check_manifest``: every problem of every row, with counts."""

    manifest: Path
    rows: int = 0  # rows read, records and unparseable rows alike
    records: int = 0  # rows that parsed into records
    sounds: int = 0  # distinct audio files referenced
    total_duration_s: float = 0.0  # measured where probed, else stated, over parsed records
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def by_row(self) -> dict[int | None, list[Problem]]:
        out: dict[int | None, list[Problem]] = {}
        for p in self.problems:
            out.setdefault(p.row, []).append(p)
        return out

    @property
    def counts(self) -> dict[str, int]:
        """Problems per kind, most frequent first."""
        return dict(Counter(p.kind for p in self.problems).most_common())

    @property
    def bad_rows(self) -> int:
        return len({p.row for p in self.problems if p.row is not None})

    @property
    def ok_rows(self) -> int:
        return self.rows - self.bad_rows

    def to_dict(self) -> dict:
        return {
            "manifest": str(self.manifest),
            "rows": self.rows,
            "records": self.records,
            "ok_rows": self.ok_rows,
            "bad_rows": self.bad_rows,
            "sounds": self.sounds,
            "total_duration_s": round(self.total_duration_s, 3),
            "counts": self.counts,
            "problems": [p.to_dict() for p in self.problems],
        }

    def render(self, max_problems: int = 50, width: int = 120) -> str:
        """A plain-text table of the problems (the first ``max_problems``) and a summary by kind."""
        from rich.console import Console
        from rich.table import Table

        buf = io.StringIO()
        console = Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False)
        total = self.total_duration_s
        length = f"{total / 3600:.2f} h" if total >= 36 else f"{total:.1f} s"
        console.print(f"{self.manifest}: {self.rows} rows, {self.ok_rows} ok, {self.bad_rows} with problems; "
                      f"{self.sounds} audio files, {length}")
        if self.problems:
            table = Table(show_header=True, header_style="bold")
            for col, kw in (("row", {"justify": "right"}), ("id", {"overflow": "fold"}), ("kind", {}),
                            ("problem", {"overflow": "fold", "ratio": 1})):
                table.add_column(col, **kw)
            for p in self.problems[:max_problems]:
                table.add_row("-" if p.row is None else str(p.row), p.id or "", p.kind, p.message)
            console.print(table)
            if len(self.problems) > max_problems:
                console.print(f"... {len(self.problems) - max_problems} more problems (see to_dict())")
            summary = Table(show_header=True, header_style="bold")
            summary.add_column("kind")
            summary.add_column("count", justify="right")
            for kind, n in self.counts.items():
                summary.add_row(kind, str(n))
            console.print(summary)
        return buf.getvalue()


def check_manifest(path: str | os.PathLike, *, audio_root: str | os.PathLike | None = None,
                   probe_audio: ProbeMode = True, duration_tolerance_s: float = 0.5,
                   max_duration_s: float | None = None, workers: int = 1) -> Report:
    """Check every row of a manifest and report all problems (see ``check_record``), including duplicate ids
    across the file. Never stops at a bad row; a JSON list that does not parse is reported as one file-level
    ``bad_json`` problem. Each distinct audio file is probed once, by ``workers`` threads (decoding releases
    the GIL in PyAV and soxr, so threads help)."""
    path = Path(path)
    report = Report(manifest=path)
    records: list[Record] = []
    try:
        for rec, problem in iter_manifest(path, audio_root=audio_root, strict=False):
            report.rows += 1
            if problem is not None:
                report.problems.append(problem)
            else:
                records.append(rec)
    except ManifestError as e:
        report.problems.append(Problem(BAD_JSON, str(e).removeprefix(f"{path}: "), None, None, path))
        return report
    report.records = len(records)

    unique = list(dict.fromkeys(s for rec in records for s in rec.sounds))
    report.sounds = len(unique)
    mode: ProbeMode = "decode" if probe_audio is True else probe_audio
    if workers > 1 and len(unique) > 1:
        with ThreadPoolExecutor(workers) as pool:
            cache = dict(zip(unique, pool.map(lambda s: probe_sound(s, mode), unique)))
    else:
        cache = {s: probe_sound(s, mode) for s in unique}

    seen: dict[str, int] = {}
    for rec in records:
        report.problems += check_record(rec, probe_audio=probe_audio, duration_tolerance_s=duration_tolerance_s,
                                        max_duration_s=max_duration_s, seen_ids=seen, probe_cache=cache)
        measured = [cache[s].duration_s for s in rec.sounds]
        if rec.sounds and all(m is not None for m in measured):
            report.total_duration_s += sum(measured)
        elif rec.total_duration is not None:
            report.total_duration_s += rec.total_duration
    report.problems.sort(key=lambda p: (p.row is not None, p.row or 0))  # file-level first; stable per row
    return report
