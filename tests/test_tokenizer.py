"""Tests for afnext.tokenizer and afnext.tokenizer_files on the tiny byte-level BPE.

transformers (test-only) is the oracle: the directory written by `write_tokenizer_files` must load with
`AutoTokenizer` and give the same ids and decoded text as `TextTokenizer`.
"""

import json

import pytest

from afnext.tokenizer import IncrementalDecoder, TextTokenizer
from afnext.tokenizer_files import (
    SPECIAL_TOKENS,
    THINK_TOKENS,
    build_tiny_tokenizer,
    default_tiny_corpus,
    write_minimal_config,
    write_tokenizer_files,
)

SAMPLES = [
    "Hello world, the dog is barking at 12.5 s.",
    "café crème — naïve façade",
    "中文语音识别 and 日本語",
    "emoji 🎵🎶 👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "<|im_start|>user\n<sound>What is this?<|im_end|>\n<|im_start|>assistant\n",
    "<think>It starts at 3.2 s.</think> The answer is (B).",
    "  leading spaces\n\n\ttabs and\r\nnewlines  ",
    "",
]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(d, tiny, kind="afnext")
    write_minimal_config(d, tiny, kind="afnext")
    return d


@pytest.fixture(scope="module")
def tok(tok_dir):
    return TextTokenizer.from_dir(tok_dir)


def test_tiny_tokenizer_is_deterministic_and_ordered(tiny):
    assert len(default_tiny_corpus()) >= 200
    assert build_tiny_tokenizer().to_str() == tiny.to_str()
    base = tiny.get_vocab_size(with_added_tokens=False)
    assert base == 512
    assert [tiny.token_to_id(t) for t in SPECIAL_TOKENS + THINK_TOKENS] == list(range(base, base + 8))
    special = {t.content for t in tiny.get_added_tokens_decoder().values() if t.special}
    assert special == set(SPECIAL_TOKENS)  # think tags are added but not special


@pytest.mark.parametrize("kind", ["afnext", "af3"])
def test_written_layout(tmp_path, tiny, kind):
    write_tokenizer_files(tmp_path, tiny, kind=kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chat_template.jinja", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
        "tokenizer_config.json"]
    proc = json.loads((tmp_path / "processor_config.json").read_text())
    assert proc["processor_class"] == {"afnext": "MusicFlamingoProcessor", "af3": "AudioFlamingo3Processor"}[kind]
    assert proc["max_audio_len"] == {"afnext": 1800, "af3": 600}[kind]
    assert proc["feature_extractor"]["feature_size"] == 128
    assert ("audio_bos_token" in proc) == (kind == "afnext")
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (cfg["eos_token"], cfg["pad_token"], cfg["bos_token"]) == ("<|im_end|>", "<|endoftext|>", None)


def test_text_tokenizer_basics(tok, tiny):
    assert tok.vocab_size == 520 == len(tok)
    assert tok.pad_token_id == tiny.token_to_id("<|endoftext|>")
    assert tok.eos_token_id == tiny.token_to_id("<|im_end|>")
    assert tok.bos_token_id is None
    assert tok.special_ids == {tiny.token_to_id(t) for t in SPECIAL_TOKENS}
    assert tok.token_to_id("<not a token>") is None
    assert tok.id_to_token(tok.token_to_id("<sound>")) == "<sound>"
    ids = tok.encode("Hello <sound> world")
    assert tok.token_to_id("<sound>") in ids and ids[0] != tok.token_to_id("<|endoftext|>")  # no BOS
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("<think>x</think><|im_end|>"), skip_special_tokens=True) == "<think>x</think>"


def test_memo_is_exact_and_bounded(tok_dir, monkeypatch):
    import afnext.tokenizer as T

    monkeypatch.setattr(T, "MEMO_ENTRIES", 4)
    tok = TextTokenizer.from_dir(tok_dir)
    plain = [tok.backend.encode(t, add_special_tokens=False).ids for t in SAMPLES]
    for _ in range(2):  # cold, then from the memo
        assert [tok.encode(t) for t in SAMPLES] == plain
        assert tok.encode_batch(SAMPLES + SAMPLES[:2]) == plain + plain[:2]
        assert len(tok._memo) <= 4
    got = tok.encode(SAMPLES[-2])
    assert SAMPLES[-2] in tok._memo  # remembered, not just re-encoded
    got.append(-1)  # callers own what they get
    assert tok.encode(SAMPLES[-2]) == plain[-2]
    # A token added after encoding invalidates what was remembered.
    before = tok.encode("zqzqzq")
    tok.backend.add_tokens(["zqzqzq"])
    after = tok.encode("zqzqzq")
    assert after == [tok.token_to_id("zqzqzq")] != before


def test_parity_with_transformers(tok_dir, tok):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    assert (ref.pad_token_id, ref.eos_token_id, len(ref)) == (tok.pad_token_id, tok.eos_token_id, tok.vocab_size)
    for text in SAMPLES:
        ids = ref(text)["input_ids"]
        assert tok.encode(text) == ids, text
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert tok.encode_batch(SAMPLES) == [ref(t)["input_ids"] for t in SAMPLES]


def test_vocab_merges_fallback(tmp_path, tiny, tok):
    # Older checkpoints: vocab.json + merges.txt, added tokens only in tokenizer_config.json.
    tiny.model.save(str(tmp_path))
    write_tokenizer_files(tmp_path / "full", tiny)
    (tmp_path / "tokenizer_config.json").write_text((tmp_path / "full" / "tokenizer_config.json").read_text())
    legacy = TextTokenizer.from_dir(tmp_path)
    for text in SAMPLES:
        assert legacy.encode(text) == tok.encode(text)
    assert legacy.special_ids == tok.special_ids


def test_added_token_id_mismatch_is_an_error(tmp_path, tiny):
    write_tokenizer_files(tmp_path, tiny)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"]["999"] = cfg["added_tokens_decoder"].pop("515")  # <sound>
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="<sound>"):
        TextTokenizer.from_dir(tmp_path)


def _stream(tok, ids, skip):
    dec = IncrementalDecoder(tok, skip_special_tokens=skip)
    deltas = [dec.push(i) for i in ids]
    deltas.append(dec.flush())
    return deltas


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_decoder_matches_full_decode(tok, skip):
    text = ("<think>Le café est à 3.5 s.</think> 中文 réponse 🎵🎶 👨‍👩‍👧 done<|im_end|>"
            "<|im_start|>assistant\nnaïve ünïcödé 日本語 ✓")
    ids = tok.encode(text)
    assert len(ids) > len(text) / 2  # byte-level pieces: multibyte characters span several ids
    deltas = _stream(tok, ids, skip)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip)
    assert not any("\ufffd" in d for d in deltas)  # never a partial character
    assert sum(bool(d) for d in deltas) > 10  # it actually streams


def test_incremental_decoder_flushes_a_truncated_character(tok):
    ids = tok.encode("ok 🎵")
    cut = ids[:-2]  # stop inside the 4-byte emoji (one id per byte in the tiny vocabulary)
    deltas = _stream(tok, cut, True)
    assert "".join(deltas) == tok.decode(cut) == "ok \ufffd"
    assert deltas[-1] == "\ufffd"  # held back until flush, then emitted as decode() does
