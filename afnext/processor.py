"""Prompt side of AF-Next: chat template, audio placeholders, batching, decoding.

`Processor` reproduces transformers' `MusicFlamingoProcessor` (AF-Next, `model_type: musicflamingo`) and
`AudioFlamingo3Processor` (AF3) without importing transformers: for inputs transformers accepts it returns
the same `input_ids`, `attention_mask`, `input_features`, `input_features_mask` and `labels`.

Placeholders. Each `<sound>` in a prompt stands for one audio item, taken in order from a flat list that
spans the batch. An audio of W windows with F unmasked mel frames in total becomes
`num_tokens_from_frames(F)` copies of `<sound>`, wrapped in `<|sound_bos|>`/`<|sound_eos|>` for AF-Next
(bare for AF3). Unlike transformers, a prompt may hold several `<sound>`s (transformers insists on one audio
per prompt). We expand by splicing ids rather than by rewriting text into tens of thousands of `<sound>`s:
`<sound>` is a special added token, which `tokenizers` splits on before pre-tokenising, so
`encode(a + "<sound>" + b) == encode(a) + [sound] + encode(b)` and the splice gives identical ids.

Chat template. Rendered in the jinja environment transformers uses (immutable sandbox, trim_blocks,
lstrip_blocks, loopcontrols, its `tojson`, `raise_exception`, `strftime_now`, `namespace` and `dict`), with
the same variables (`messages`, `tools`, `documents`, `add_generation_prompt`, the special-token names).
The checkpoint template writes at most one `<sound>` per message, whatever the number of audio blocks, so a
message with k >= 2 audio blocks is first rewritten to the string `"<sound>" * k + text`; for k == 1 that is
exactly what the template itself renders, so the rewrite only extends the template to what the model can take.
Audio sources in content blocks are paths, `file://` URLs or in-memory data; remote URLs are refused, never
fetched.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import jinja2
import jinja2.ext
import numpy as np
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import audio as A
from .hub import resolve_model_dir
from .tokenizer import TextTokenizer

KIND_BY_MODEL_TYPE = {"musicflamingo": "afnext", "audioflamingo3": "af3"}
KIND_BY_PROCESSOR_CLASS = {"MusicFlamingoProcessor": "afnext", "AudioFlamingo3Processor": "af3"}
DEFAULT_MAX_AUDIO_LEN = {"afnext": 1800, "af3": 600}  # seconds; the released processors' values
IGNORE_INDEX = -100


class BatchEncoding(dict):
    """Model inputs: a dict with attribute access and `.to(device)` (floating tensors may also change dtype)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device=None, dtype: torch.dtype | None = None) -> "BatchEncoding":
        def move(v):
            if not isinstance(v, torch.Tensor):
                return v
            return v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)

        return BatchEncoding({k: move(v) for k, v in self.items()})


class Processor:
    def __init__(self, tokenizer: TextTokenizer, *, kind: str = "afnext", chat_template: str | None = None,
                 max_audio_len: float | None = None, audio_token: str = "<sound>",
                 audio_bos_token: str | None = "<|sound_bos|>", audio_eos_token: str | None = "<|sound_eos|>"):
        if kind not in DEFAULT_MAX_AUDIO_LEN:
            raise ValueError(f"unknown processor kind {kind!r}; expected 'afnext' or 'af3'")
        self.tokenizer, self.kind, self.chat_template = tokenizer, kind, chat_template
        if chat_template is None:
            from .tokenizer_files import chat_template_text

            self.chat_template = chat_template_text(kind)
        self.max_audio_len = DEFAULT_MAX_AUDIO_LEN[kind] if max_audio_len is None else max_audio_len
        self.audio_token = audio_token
        self.audio_bos_token = audio_bos_token if kind == "afnext" else None
        self.audio_eos_token = audio_eos_token if kind == "afnext" else None
        for tok in (self.audio_token, self.audio_bos_token, self.audio_eos_token):
            if tok is not None and tokenizer.token_to_id(tok) is None:
                raise ValueError(f"the tokenizer has no {tok!r} token, which the {kind} processor needs")
        # Splicing ids (see module docstring) is exact only if the tokenizer cuts the text at the placeholder
        # and nowhere else; check it once rather than trusting the added token's flags.
        probe = ("a. ", " b\n")
        self._splice_exact = tokenizer.encode(audio_token.join(probe)) == (
            tokenizer.encode(probe[0]) + [self.audio_token_id] + tokenizer.encode(probe[1]))

    # --- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id) -> "Processor":
        d = resolve_model_dir(path_or_id)
        config = _read_json(d / "config.json")
        proc = _read_json(d / "processor_config.json")
        kind = (KIND_BY_MODEL_TYPE.get(config.get("model_type"))
                or KIND_BY_PROCESSOR_CLASS.get(proc.get("processor_class")))
        if kind is None:
            raise ValueError(f"{d}: model_type {config.get('model_type')!r} is neither musicflamingo (AF-Next) "
                             "nor audioflamingo3 (AF3)")
        # transformers 5.x nests the feature extractor in processor_config.json and reads that first.
        _check_feature_extractor(proc.get("feature_extractor") or _read_json(d / "preprocessor_config.json"), d)
        keys = ("audio_token", "audio_bos_token", "audio_eos_token", "max_audio_len")
        kwargs = {k: proc[k] for k in keys if k in proc}
        processor = cls(TextTokenizer.from_dir(d), kind=kind, chat_template=_find_chat_template(d), **kwargs)
        for key, token_id in (("audio_token_id", processor.audio_token_id),
                              ("audio_bos_token_id", processor.audio_bos_token_id),
                              ("audio_eos_token_id", processor.audio_eos_token_id)):
            if config.get(key) is not None and config[key] != token_id:
                raise ValueError(f"{d}: config.json {key}={config[key]} but the tokenizer gives {token_id}")
        return processor

    # --- properties ----------------------------------------------------------------------------------
    @property
    def audio_token_id(self) -> int:
        return self.tokenizer.token_to_id(self.audio_token)

    @property
    def audio_bos_token_id(self) -> int | None:
        return self.tokenizer.token_to_id(self.audio_bos_token)

    @property
    def audio_eos_token_id(self) -> int | None:
        return self.tokenizer.token_to_id(self.audio_eos_token)

    @property
    def audio_token_ids(self) -> list[int]:
        """Ids that carry no text (masked out of labels)."""
        return [i for i in (self.audio_token_id, self.audio_bos_token_id, self.audio_eos_token_id) if i is not None]

    @property
    def max_windows(self) -> int:
        return int(self.max_audio_len // A.WINDOW_SECONDS)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    @property
    def default_system_prompt(self) -> str | None:
        # The literal system turn the template writes when the conversation has none (real or escaped \n).
        m = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", self.chat_template or "", re.S)
        return m.group(1) if m and "{" not in m.group(1) else None

    # --- tokenising ----------------------------------------------------------------------------------
    def __call__(self, text, audio=None, *, truncate: bool = False, padding_side: str = "left",
                 output_labels: bool = False, return_tensors: str = "pt") -> BatchEncoding:
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("text must be a string or a non-empty list of strings")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        items = _audio_items(audio)
        n_placeholders = sum(t.count(self.audio_token) for t in texts)
        if n_placeholders != len(items):
            raise ValueError(f"the text has {n_placeholders} {self.audio_token} placeholder(s) but "
                             f"{len(items)} audio input(s) were given; they must match one to one")

        out = BatchEncoding()
        n_tokens: list[int] = []
        if items:
            windows, per_item = [], []
            for i, item in enumerate(items):
                source, rate, name = _audio_source(item, i)
                wave = A.load_audio(source, rate, name=name)
                w = A.split_windows(wave, max_windows=self.max_windows, truncate=truncate, source=name)
                windows += w
                per_item.append(len(w))
            features, mask = A.extract_features(windows)
            features, mask = torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(mask, dtype=torch.int32)
            frames = mask.sum(-1).tolist()
            starts = np.cumsum([0] + per_item)
            # Like transformers: one formula over the audio's total frame count (= sum over windows here,
            # because a full window's 3000 frames divide evenly by the stride 4).
            n_tokens = [A.num_tokens_from_frames(int(sum(frames[s:e]))) for s, e in zip(starts[:-1], starts[1:])]
            out["input_features"], out["input_features_mask"] = features, mask

        rows = self._expand(texts, n_tokens)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            sl = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[b, sl] = torch.tensor(row, dtype=torch.long)
            attn[b, sl] = 1
        result = BatchEncoding(input_ids=ids, attention_mask=attn, **out)
        if output_labels:
            labels = ids.clone()
            labels[torch.isin(labels, torch.tensor(self.audio_token_ids))] = IGNORE_INDEX
            # As transformers does: every pad-id token is ignored, padding or not (Qwen's pad is
            # <|endoftext|>, which a chat prompt never contains).
            labels[labels == self.pad_token_id] = IGNORE_INDEX
            result["labels"] = labels
        if return_tensors == "np":
            result = BatchEncoding({k: v.numpy() for k, v in result.items()})
        return result

    def _expand(self, texts: list[str], n_tokens: list[int]) -> list[list[int]]:
        counts = iter(n_tokens)
        bos, eos = self.audio_bos_token_id, self.audio_eos_token_id
        if not self._splice_exact:  # e.g. a placeholder token with strip flags: expand the text as transformers does
            bos_s, eos_s = self.audio_bos_token or "", self.audio_eos_token or ""
            expanded = [re.sub(re.escape(self.audio_token), lambda m: bos_s + m.group() * next(counts) + eos_s, t)
                        for t in texts]
            return self.tokenizer.encode_batch(expanded)
        pieces = [t.split(self.audio_token) for t in texts]
        encoded = iter(self.tokenizer.encode_batch([p for ps in pieces for p in ps]))
        rows = []
        for ps in pieces:
            row = list(next(encoded))
            for _ in ps[1:]:
                row += ([bos] if bos is not None else []) + [self.audio_token_id] * next(counts)
                row += ([eos] if eos is not None else []) + next(encoded)
            rows.append(row)
        return rows

    # --- chat ----------------------------------------------------------------------------------------
    def apply_chat_template(self, conversation, *, add_generation_prompt: bool = True, tokenize: bool = True,
                            return_dict: bool = True, truncate: bool = False, chat_template: str | None = None,
                            tools=None, documents=None, padding_side: str = "left", output_labels: bool = False,
                            return_tensors: str = "pt", **template_kwargs):
        batched = (isinstance(conversation, (list, tuple)) and bool(conversation)
                   and isinstance(conversation[0], (list, tuple)))
        conversations = list(conversation) if batched else [conversation]
        rendered, items = [], []
        for conv in conversations:
            messages, conv_items = _prepare_messages(conv, self.audio_token, need_sources=tokenize)
            items += conv_items
            rendered.append(render_chat_template(
                chat_template or self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                tools=tools, documents=documents, **{**self.tokenizer.special_tokens_map, **template_kwargs}))
        if not tokenize:
            return rendered if batched else rendered[0]
        enc = self(rendered, audio=items or None, truncate=truncate, padding_side=padding_side,
                   output_labels=output_labels, return_tensors=return_tensors)
        return enc if return_dict else enc["input_ids"]

    # --- decoding ------------------------------------------------------------------------------------
    def decode(self, ids, skip_special_tokens: bool = True) -> str | list[str]:
        """One sequence -> str; a batch (2-D tensor or list of lists) -> list[str], as transformers does."""
        nested = isinstance(ids, (list, tuple)) and len(ids) > 0 and isinstance(ids[0], (list, tuple))
        if nested or getattr(ids, "ndim", 1) == 2:
            return self.batch_decode(ids, skip_special_tokens=skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in ids]


# --- audio items -------------------------------------------------------------------------------------
def _audio_items(audio) -> list:
    if audio is None:
        return []
    rate_like = isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[1], (int, float))
    if rate_like and not isinstance(audio[1], bool):
        return [audio]  # one (array, sampling_rate) pair, not a list of two items
    if isinstance(audio, (list, tuple)):
        return list(audio)
    return [audio]


def _audio_source(item, index: int):
    """(source, sampling_rate, name) for `audio.load_audio`; bare arrays are taken to be 16 kHz. `name` is
    what errors call the item: its path, else its position in the flat audio list."""
    rate = A.SAMPLE_RATE
    if isinstance(item, tuple) and len(item) == 2:
        item, rate = item
    elif isinstance(item, dict):  # datasets-style {"array", "sampling_rate"} or {"path"}
        if "array" in item:
            item, rate = item["array"], item.get("sampling_rate", A.SAMPLE_RATE)
        else:
            item = item.get("path")
    if isinstance(item, (str, os.PathLike)):
        return _local_path(item), None, os.fspath(item)
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item, rate, f"<audio {index}>"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return item, None, f"<audio {index}: bytes>"
    raise A.AudioError(f"<audio {index}>: unsupported audio input of type {type(item).__name__}")


def _local_path(ref) -> str:
    ref = os.fspath(ref)
    if ref.startswith("file://"):
        return unquote(urlparse(ref).path)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", ref):
        raise A.AudioError(f"{ref}: remote audio URLs are not fetched; download the file and pass its local path")
    return ref


def _is_audio_block(block) -> bool:
    # The template's own test: a block is audio if typed so or if it has an "audio" key.
    return isinstance(block, dict) and (block.get("type") == "audio" or "audio" in block)


def _prepare_messages(conversation, audio_token: str, *, need_sources: bool):
    """Drop None-valued keys (as transformers does), gather audio sources in order, and rewrite messages
    holding several audio blocks into the string the model expects (see module docstring)."""
    messages, items = [], []
    for msg in conversation:
        msg = {k: v for k, v in dict(msg).items() if v is not None}
        content = msg.get("content")
        if isinstance(content, (list, tuple)):
            audio_blocks = [c for c in content if _is_audio_block(c)]
            for block in audio_blocks if need_sources else ():
                key = next((k for k in ("audio", "path", "url") if block.get(k) is not None), None)
                if key is None:
                    raise ValueError(f"audio content block {block!r} has no 'audio', 'path' or 'url'")
                items.append(_local_path(block[key]) if key == "url" else block[key])
            if len(audio_blocks) > 1:
                text = "".join(c["text"] for c in content
                               if not _is_audio_block(c) and (c.get("type") == "text" or "text" in c))
                msg["content"] = audio_token * len(audio_blocks) + text
        messages.append(msg)
    return messages, items


# --- jinja ---------------------------------------------------------------------------------------------
class _GenerationTag(jinja2.ext.Extension):
    """Accept `{% generation %}...{% endgeneration %}` (training templates mark assistant spans with it)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore-prefixed attributes (a sandbox hardening transformers applies)."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


class _TemplateDict:
    """`dict(...)` for templates without handing them the `dict` type itself (as transformers does)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes; chat templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


_TEMPLATES: dict[str, jinja2.Template] = {}


def _compile(template: str) -> jinja2.Template:
    if template not in _TEMPLATES:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_GenerationTag, jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                           dict=_TemplateDict(), namespace=_Namespace)
        _TEMPLATES[template] = env.from_string(template)
    return _TEMPLATES[template]


def _plain(value):
    """Only JSON-like data reaches the sandbox; arrays, tensors and other objects become '<TypeName>'."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic):
        return _plain(value.item())
    for base in (str, int, float):  # subclasses (enums, ...) are cut back to the base type's methods
        if isinstance(value, base):
            return getattr(base, f"__{base.__name__}__")(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def render_chat_template(template: str, messages, *, add_generation_prompt: bool = True, tools=None,
                         documents=None, **kwargs) -> str:
    return _compile(template).render(messages=_plain(list(messages)), tools=_plain(tools), documents=_plain(documents),
                                     add_generation_prompt=add_generation_prompt, **_plain(kwargs))


# --- checkpoint files --------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _find_chat_template(d: Path) -> str | None:
    """The processor's template, in transformers' order of preference; the tokenizer's (text-only) template
    is the last resort."""
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    for name in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        template = _read_json(d / name).get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            template = {t["name"]: t["template"] for t in template}
        if isinstance(template, dict):
            template = template.get("default")
        if template:
            return template
    return None


def _check_feature_extractor(fe: dict, d: Path) -> None:
    expected = {"sampling_rate": A.SAMPLE_RATE, "feature_size": A.N_MELS, "hop_length": A.HOP_LENGTH,
                "n_fft": A.N_FFT, "chunk_length": A.WINDOW_SECONDS}
    bad = {k: fe[k] for k, v in expected.items() if k in fe and fe[k] != v}
    if bad:
        raise ValueError(f"{d}: feature extractor settings {bad} differ from the fixed AF-Next front end {expected}")
