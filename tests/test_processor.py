"""Tests for afnext.processor against transformers' MusicFlamingoProcessor / AudioFlamingo3Processor.

Both processors load the same tiny checkpoint directory (written by afnext.tokenizer_files), so any
difference in rendered prompts, ids, masks, features or labels is a difference in processing.
"""

import wave

import numpy as np
import pytest
import torch

from afnext import audio as A
from afnext.audio import AudioError
from afnext.processor import BatchEncoding, Processor
from afnext.tokenizer_files import build_tiny_tokenizer, write_minimal_config, write_tokenizer_files

transformers = pytest.importorskip("transformers")
SR = A.SAMPLE_RATE


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tok = build_tiny_tokenizer()
    out = {}
    for kind in ("afnext", "af3"):
        d = tmp_path_factory.mktemp(kind)
        write_tokenizer_files(d, tok, kind=kind)
        write_minimal_config(d, tok, kind=kind)
        out[kind] = d
    return out


@pytest.fixture(scope="module")
def procs(dirs):
    return {kind: (Processor.from_pretrained(d), transformers.AutoProcessor.from_pretrained(str(d)))
            for kind, d in dirs.items()}


@pytest.fixture(scope="module")
def clip65():
    return _noise(65.0, 0)  # 3 windows, the last 5 s


def _assert_same(ours, ref, *, features=True):
    assert set(ours) == set(ref), (set(ours), set(ref))
    for key in ("input_ids", "attention_mask", "labels", "input_features_mask"):
        if key in ref:
            assert ours[key].dtype == ref[key].dtype, key
            assert torch.equal(ours[key], ref[key]), key
    if features and "input_features" in ref:
        assert ours["input_features"].dtype == torch.float32
        torch.testing.assert_close(ours["input_features"], ref["input_features"], atol=1e-4, rtol=0)


CONVERSATIONS = {
    "text_only": [{"role": "user", "content": "What is 2 + 2?"}],
    "text_blocks": [{"role": "user", "content": [{"type": "text", "text": "Hello "},
                                                 {"type": "text", "text": "there."}]}],
    "one_audio": [{"role": "user", "content": [{"type": "audio", "path": "clip.wav"},
                                               {"type": "text", "text": "Describe the audio."}]}],
    "text_then_audio": [{"role": "user", "content": [{"type": "text", "text": "Transcribe: "},
                                                     {"type": "audio", "audio": "clip.wav"}]}],
    "multi_turn": [
        {"role": "user", "content": [{"type": "audio", "path": "a.wav"},
                                     {"type": "text", "text": "What instrument?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A piano, at 12.5 s."}]},
        {"role": "user", "content": "And the tempo? Réponds en français 中文 🎵"},
    ],
    "system": [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": [{"type": "audio", "url": "file:///tmp/x.wav"},
                                            {"type": "text", "text": "Hi"}]}],
}


@pytest.mark.parametrize("kind", ["afnext", "af3"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_strings_match(procs, kind, name, gen):
    ours, ref = procs[kind]
    conv = CONVERSATIONS[name]
    expected = ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
    assert ours.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen) == expected
    # batched input gives a list
    batch = ours.apply_chat_template([conv, conv], tokenize=False, add_generation_prompt=gen)
    assert batch == ref.apply_chat_template([conv, conv], tokenize=False, add_generation_prompt=gen) == [expected] * 2


def test_system_prompt_and_properties(procs):
    ours, ref = procs["afnext"]
    assert ours.kind == "afnext" and ours.max_windows == 60 and ours.max_audio_len == ref.max_audio_len == 1800
    assert ours.default_system_prompt.startswith("You are Audio Flamingo-Next, a multimodal assistant")
    assert ours.default_system_prompt.endswith("audio, speech, music, or sound.")
    assert (ours.audio_token, ours.audio_token_id) == (ref.audio_token, ref.audio_token_id)
    assert (ours.audio_bos_token_id, ours.audio_eos_token_id) == (ref.audio_bos_token_id, ref.audio_eos_token_id)
    af3, ref3 = procs["af3"]
    assert af3.kind == "af3" and af3.max_windows == 20 and af3.default_system_prompt == "You are a helpful assistant."
    assert af3.audio_bos_token_id is None and af3.audio_eos_token_id is None
    assert af3.audio_token_id == ref3.audio_token_id


@pytest.mark.parametrize("kind", ["afnext", "af3"])
def test_long_audio_matches_transformers(procs, clip65, kind):
    ours, ref = procs[kind]
    prompt = ours.apply_chat_template(CONVERSATIONS["one_audio"], tokenize=False)
    out = ours(prompt, audio=clip65)
    _assert_same(out, ref(text=[prompt], audio=[clip65]))
    assert out["input_features"].shape == (3, 128, 3000)
    assert out["input_features_mask"].sum(-1).tolist() == [3000, 3000, 500]
    n = (out["input_ids"] == ours.audio_token_id).sum().item()
    assert n == A.num_tokens_from_frames(6500) == 1625


@pytest.mark.parametrize("kind", ["afnext", "af3"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_with_padding_matches_transformers(procs, clip65, kind, side):
    ours, ref = procs[kind]
    short = _noise(7.3, 1)
    prompts = ours.apply_chat_template([CONVERSATIONS["one_audio"], CONVERSATIONS["multi_turn"]], tokenize=False)
    ours_out = ours(prompts, audio=[clip65, short], padding_side=side, output_labels=True)
    ref_out = ref(text=prompts, audio=[clip65, short], padding_side=side, output_labels=True)
    _assert_same(ours_out, ref_out)
    pads = ours_out["attention_mask"] == 0
    assert pads.any() and bool(pads[1, 0] if side == "left" else pads[1, -1])


@pytest.mark.parametrize("kind", ["afnext", "af3"])
def test_apply_chat_template_tokenized_matches_transformers(procs, kind):
    ours, ref = procs[kind]
    a = _noise(12.0, 2)
    conv = [{"role": "user", "content": [{"type": "audio", "audio": a}, {"type": "text", "text": "Caption it."}]},
            {"role": "assistant", "content": "Rain on a roof."},
            {"role": "user", "content": "Anything else?"}]
    ours_out = ours.apply_chat_template(conv, add_generation_prompt=True)
    ref_out = ref.apply_chat_template(conv, tokenize=True, return_dict=True, add_generation_prompt=True)
    _assert_same(ours_out, ref_out)
    ids_only = ours.apply_chat_template(conv, return_dict=False)
    assert torch.equal(ids_only, ours_out["input_ids"])


def test_text_only_call_matches_transformers(procs):
    ours, ref = procs["afnext"]
    prompts = ours.apply_chat_template([CONVERSATIONS["text_only"], CONVERSATIONS["text_blocks"]], tokenize=False)
    out = ours(prompts)
    _assert_same(out, ref(text=prompts))
    assert "input_features" not in out


def test_two_sounds_in_one_prompt(procs):
    ours, _ = procs["afnext"]
    a, b = _noise(10.0, 3), _noise(45.0, 4)
    out = ours("<|im_start|>user\nCompare <sound> with <sound>.<|im_end|>\n", audio=[a, b])
    ids = out["input_ids"][0].tolist()
    bos, eos, snd = ours.audio_bos_token_id, ours.audio_eos_token_id, ours.audio_token_id
    runs = [(i, ids.index(eos, i)) for i, t in enumerate(ids) if t == bos]
    assert len(runs) == 2
    lengths = [e - s - 1 for s, e in runs]
    assert lengths == [A.num_audio_tokens(len(a)), A.num_audio_tokens(len(b))] == [250, 1125]
    assert all(set(ids[s + 1:e]) == {snd} for s, e in runs)
    assert out["input_features"].shape[0] == 1 + 2  # windows: 10 s -> 1, 45 s -> 2
    # the same through the chat template: a message with two audio blocks renders two placeholders
    conv = [{"role": "user", "content": [{"type": "audio", "audio": a}, {"type": "audio", "audio": b},
                                         {"type": "text", "text": "Which is longer?"}]}]
    assert ours.apply_chat_template(conv, tokenize=False).endswith(
        "<|im_start|>user\n<sound><sound>Which is longer?<|im_end|>\n<|im_start|>assistant\n")
    enc = ours.apply_chat_template(conv)
    assert (enc["input_ids"] == bos).sum() == 2 and (enc["input_ids"] == snd).sum() == 250 + 1125


@pytest.mark.parametrize("kind", ["afnext", "af3"])
def test_text_expansion_fallback_gives_the_same_ids(dirs, procs, kind):
    ours = procs[kind][0]
    assert ours._splice_exact
    slow = Processor.from_pretrained(dirs[kind])
    slow._splice_exact = False  # the path taken for placeholder tokens with strip flags
    texts, audio = ["x <sound> y <sound>z", "<sound>"], [_noise(1.0, 0), _noise(31.0, 1), _noise(0.5, 2)]
    _assert_same(slow(texts, audio=audio, output_labels=True), ours(texts, audio=audio, output_labels=True))


def test_af3_expands_without_bos_eos(procs):
    ours, _ = procs["af3"]
    out = ours("<sound>hi", audio=_noise(3.0, 5))
    ids = out["input_ids"][0].tolist()
    n = A.num_audio_tokens(3 * SR)
    assert ids[:n] == [ours.audio_token_id] * n and ids[n] != ours.audio_token_id
    assert ours.tokenizer.token_to_id("<|sound_bos|>") not in ids


def test_count_mismatch_messages(procs):
    ours, _ = procs["afnext"]
    with pytest.raises(ValueError, match=r"2 <sound> placeholder\(s\) but 1 audio input"):
        ours(["<sound>", "<sound>"], audio=[_noise(1.0, 0)])
    with pytest.raises(ValueError, match=r"0 <sound> placeholder\(s\) but 1 audio input"):
        ours("no placeholder", audio=_noise(1.0, 0))
    with pytest.raises(ValueError, match=r"1 <sound> placeholder\(s\) but 0 audio input"):
        ours("<sound> missing")


def test_labels_mask_audio_and_padding(procs):
    ours, _ = procs["afnext"]
    out = ours(["<sound>Short.", "A longer prompt without audio, quite a bit longer."], audio=[_noise(2.0, 6)],
               output_labels=True)
    ids, labels, attn = out["input_ids"], out["labels"], out["attention_mask"]
    audio = torch.isin(ids, torch.tensor([ours.audio_token_id, ours.audio_bos_token_id, ours.audio_eos_token_id]))
    assert audio.sum() == A.num_audio_tokens(2 * SR) + 2
    assert (labels[audio | (attn == 0)] == -100).all()
    assert torch.equal(labels[~audio & (attn == 1)], ids[~audio & (attn == 1)])


def test_audio_sources_and_errors(procs, tmp_path):
    ours, _ = procs["afnext"]
    pcm = (np.random.default_rng(7).standard_normal(2 * SR) * 3000).astype(np.int16)
    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR), w.writeframes(pcm.tobytes())
    floats = pcm.astype(np.float32) / 32768
    from_array = ours("<sound>", audio=floats)
    spaced = tmp_path / "my clip.wav"
    spaced.write_bytes(path.read_bytes())
    file_url = "file://" + str(spaced).replace(" ", "%20")
    for item in (str(path), path, path.read_bytes(), file_url, (floats, SR), {"array": floats, "sampling_rate": SR}):
        out = ours("<sound>", audio=[item])
        assert torch.equal(out["input_ids"], from_array["input_ids"])
        torch.testing.assert_close(out["input_features"], from_array["input_features"], atol=1e-5, rtol=0)
    resampled = ours("<sound>", audio=[(np.zeros(8000 * 31, np.float32), 8000)])
    assert resampled["input_features_mask"].sum(-1).tolist() == [3000, 100]
    with pytest.raises(AudioError, match="missing.wav"):
        ours("<sound>", audio=str(tmp_path / "missing.wav"))
    with pytest.raises(AudioError, match="not fetched"):
        ours.apply_chat_template([{"role": "user", "content": [{"type": "audio", "url": "https://x.org/a.wav"}]}])
    with pytest.raises(AudioError, match="<audio 1>"):
        ours("<sound><sound>", audio=[floats, np.zeros(0, np.float32)])


def test_too_long_audio(procs):
    ours, ref = procs["af3"]  # 600 s limit keeps this cheap
    clip = np.zeros(601 * SR, np.float32)
    with pytest.raises(AudioError, match="600 s"):
        ours("<sound>", audio=clip)
    with pytest.warns(UserWarning):
        out = ours("<sound>", audio=clip, truncate=True)
    _assert_same(out, ref(text=["<sound>"], audio=[clip]), features=False)
    assert out["input_features"].shape[0] == 20


def test_from_pretrained_checks(dirs, tmp_path):
    import json
    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(dirs["afnext"], d)
    # template from processor_config.json when there is no chat_template.jinja
    template = (d / "chat_template.jinja").read_text()
    (d / "chat_template.jinja").unlink()
    cfg = json.loads((d / "processor_config.json").read_text())
    (d / "processor_config.json").write_text(json.dumps({**cfg, "chat_template": template + "{# x #}"}))
    assert Processor.from_pretrained(d).chat_template == template + "{# x #}"
    # config.json and tokenizer disagree about the audio token id
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "audio_token_id": 3}))
    with pytest.raises(ValueError, match="audio_token_id"):
        Processor.from_pretrained(d)
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (d / "processor_config.json").write_text("{}")
    with pytest.raises(ValueError, match="musicflamingo"):
        Processor.from_pretrained(d)


def test_decode_and_batch_encoding(procs):
    ours, ref = procs["afnext"]
    out = ours(["<|im_start|>assistant\nLe café 中文 🎵<|im_end|>", "ok"], padding_side="left")
    assert isinstance(out, BatchEncoding) and out.input_ids is out["input_ids"]
    assert ours.batch_decode(out.input_ids) == ref.batch_decode(out["input_ids"], skip_special_tokens=True)
    assert ours.batch_decode(out.input_ids) == ["assistant\nLe café 中文 🎵", "ok"]
    assert ours.decode(out.input_ids) == ours.batch_decode(out.input_ids.tolist())
    assert ours.decode(out.input_ids[1], skip_special_tokens=False).startswith("<|endoftext|>")
    moved = out.to("cpu", dtype=torch.float16)
    assert moved.input_ids.dtype == torch.long  # dtype applies to floating tensors only
    np_out = ours("ok", return_tensors="np")
    assert isinstance(np_out["input_ids"], np.ndarray)
