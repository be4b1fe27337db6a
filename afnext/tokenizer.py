"""Text tokenizer for AF-Next checkpoints, on the `tokenizers` library alone (no transformers at runtime).

A checkpoint's `tokenizer.json` already carries the whole Qwen2 pipeline (NFC, split regex, byte-level BPE,
added tokens), so we load it as is and read only the special-token names from `tokenizer_config.json`.
Checkpoints that ship only `vocab.json` + `merges.txt` get the Qwen2 pipeline rebuilt around them.

Encoding never adds a BOS or any other token (Qwen2 has none); the chat template writes every control
token explicitly. `IncrementalDecoder` turns a stream of generated ids into text deltas for streaming:
it re-decodes a short window of recent ids (so decoders whose output depends on context stay exact) and
holds text back while it ends in U+FFFD, i.e. while a multi-byte character is still incomplete.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer


def _token_name(value) -> str | None:
    # tokenizer_config.json stores special tokens as strings or as serialised AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value


def _as_id_list(ids) -> list[int]:
    if hasattr(ids, "tolist"):  # torch tensors and numpy arrays
        ids = ids.tolist()
    return [int(i) for i in ids]


MEMO_ENTRIES = 65536  # distinct texts whose ids are remembered (a training run re-encodes its texts every epoch)


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the checkpoint's special-token names.

    Encodings are memoised (least recently used, ``MEMO_ENTRIES`` texts): a training run renders and
    encodes the same system turns, questions and answers every epoch, ~20 ms of a 0.4-s nano step
    uncached. The memo is dropped whenever the backend's vocabulary changes size (tokens added)."""

    def __init__(self, tokenizer: Tokenizer, *, eos_token: str | None = None, pad_token: str | None = None,
                 bos_token: str | None = None, unk_token: str | None = None):
        self.backend = tokenizer
        self.eos_token, self.pad_token, self.bos_token, self.unk_token = eos_token, pad_token, bos_token, unk_token
        self._memo: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._memo_vocab = -1
        self._memo_lock = threading.Lock()  # the data loader may encode from threads

    @classmethod
    def from_dir(cls, path) -> "TextTokenizer":
        path = Path(path)
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        if (path / "tokenizer.json").is_file():
            backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            backend = _qwen2_from_vocab_merges(path / "vocab.json", path / "merges.txt")
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json (or vocab.json + merges.txt) found")
        _sync_added_tokens(backend, config.get("added_tokens_decoder") or {}, path)
        names = {k: _token_name(config.get(k)) for k in ("eos_token", "pad_token", "bos_token", "unk_token")}
        return cls(backend, **names)

    # --- encoding / decoding ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        vocab = self.backend.get_vocab_size(with_added_tokens=True)
        found: dict[int, tuple[int, ...]] = {}
        with self._memo_lock:
            if vocab != self._memo_vocab:
                self._memo.clear()
                self._memo_vocab = vocab
            for i, t in enumerate(texts):
                ids = self._memo.get(t)
                if ids is not None:
                    self._memo.move_to_end(t)
                    found[i] = ids
        missing = [i for i in range(len(texts)) if i not in found]
        if missing:
            fresh = self.backend.encode_batch([texts[i] for i in missing], add_special_tokens=False)
            with self._memo_lock:
                for i, e in zip(missing, fresh):
                    found[i] = tuple(e.ids)
                    if self._memo_vocab == vocab:
                        self._memo[texts[i]] = found[i]
                while len(self._memo) > MEMO_ENTRIES:
                    self._memo.popitem(last=False)
        return [list(found[i]) for i in range(len(texts))]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(_as_id_list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    # --- special tokens ---------------------------------------------------------------------------------
    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self.token_to_id(self.pad_token)

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> set[int]:
        return {i for i, tok in self.backend.get_added_tokens_decoder().items() if tok.special}

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Names the chat template may read (transformers passes the same variables)."""
        names = {"bos_token": self.bos_token, "eos_token": self.eos_token,
                 "unk_token": self.unk_token, "pad_token": self.pad_token}
        return {k: v for k, v in names.items() if v is not None}

    def __len__(self) -> int:
        return self.vocab_size


class IncrementalDecoder:
    """Streaming detokenizer: `push(id)` returns the newly completed text, `flush()` the rest.

    Invariant: `"".join(deltas) == tokenizer.decode(all_ids, skip_special_tokens)`. Two offsets walk the id
    list: text before `read` has been emitted, and ids from `prefix` to `read` are re-decoded as context, so
    the delta is `decode(ids[prefix:]) - decode(ids[prefix:read])`. Decoding only this window keeps each
    step O(window) instead of O(sequence).
    """

    def __init__(self, tokenizer: TextTokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.skip_special_tokens = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def _delta(self, final: bool) -> str:
        dec = self.tokenizer.backend.decode
        before = dec(self.ids[self.prefix:self.read], skip_special_tokens=self.skip_special_tokens)
        after = dec(self.ids[self.prefix:], skip_special_tokens=self.skip_special_tokens)
        # Hold back an incomplete UTF-8 character (decoded as U+FFFD) until more bytes arrive.
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        return self._delta(final=False)

    def flush(self) -> str:
        return self._delta(final=True)


def _qwen2_from_vocab_merges(vocab_file: Path, merges_file: Path) -> Tokenizer:
    from tokenizers import models

    from .tokenizer_files import _new_qwen2_like

    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in merges_file.read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#version")]
    tok = _new_qwen2_like()
    tok.model = models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False)
    return tok


def _sync_added_tokens(backend: Tokenizer, decoder: dict, path: Path) -> None:
    """Add tokens listed in tokenizer_config's added_tokens_decoder that tokenizer.json lacks, and check ids.

    A mismatch means the two files disagree about the vocabulary; better to fail than to embed the wrong rows.
    """
    for idx, entry in sorted(((int(k), v) for k, v in decoder.items()), key=lambda kv: kv[0]):
        content = entry["content"]
        if backend.token_to_id(content) is None:
            token = AddedToken(content, special=entry.get("special", True), normalized=entry.get("normalized", False),
                               lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                               single_word=entry.get("single_word", False))
            (backend.add_special_tokens if token.special else backend.add_tokens)([token])
        if backend.token_to_id(content) != idx:
            raise ValueError(f"{path}: tokenizer_config.json says {content!r} is id {idx}, "
                             f"but the tokenizer has it at {backend.token_to_id(content)}")
