"""Numerical parity with transformers' reference implementation (test-only oracle).

A tiny random reference model is built with transformers, saved with its own save_pretrained, and
loaded by afnext; both run on identical inputs. Checked: audio embeddings and logits within 1e-4
(fp32) and 20 greedy tokens identical, on a 65-s audio (3 windows, the last partial), a padded
batch of two audio lengths, two audios in one prompt, and a text-only prompt, for both layouts.
"""

import pytest
import torch

from conftest import tone_mix

transformers = pytest.importorskip("transformers")

from afnext import AFNext, Processor  # noqa: E402
from afnext.tokenizer_files import build_tiny_tokenizer, write_tokenizer_files  # noqa: E402

ATOL = 1e-4


def _reference_model(kind: str, tok):
    from transformers import (AudioFlamingo3Config, AudioFlamingo3EncoderConfig, AudioFlamingo3ForConditionalGeneration,
                              MusicFlamingoConfig, MusicFlamingoForConditionalGeneration, Qwen2Config)

    ids = {t: tok.token_to_id(t) for t in ["<sound>", "<|sound_bos|>", "<|sound_eos|>", "<|im_end|>", "<|endoftext|>"]}
    enc = AudioFlamingo3EncoderConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192)
    txt = Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
                      rope_theta=15.3e6 if kind == "afnext" else 1e6, eos_token_id=ids["<|im_end|>"],
                      pad_token_id=ids["<|endoftext|>"])
    if kind == "afnext":
        cfg = MusicFlamingoConfig(audio_config=enc.to_dict(), text_config=txt.to_dict(), audio_token_id=ids["<sound>"],
                                  audio_bos_token_id=ids["<|sound_bos|>"], audio_eos_token_id=ids["<|sound_eos|>"])
        model = MusicFlamingoForConditionalGeneration(cfg)
    else:
        cfg = AudioFlamingo3Config(audio_config=enc.to_dict(), text_config=txt.to_dict(), audio_token_id=ids["<sound>"])
        model = AudioFlamingo3ForConditionalGeneration(cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # larger-than-trained weights: random logits far from uniform, so errors show
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.15)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model.eval()


@pytest.fixture(scope="module", params=["afnext", "af3"])
def pair(request, tmp_path_factory):
    kind = request.param
    d = tmp_path_factory.mktemp(f"ref-{kind}")
    tok = build_tiny_tokenizer()
    ref = _reference_model(kind, tok)
    ref.save_pretrained(d)
    write_tokenizer_files(d, tok, kind=kind)
    ours = AFNext.from_pretrained(d, dtype=torch.float32)
    return kind, ref, ours, Processor.from_pretrained(d), transformers.AutoProcessor.from_pretrained(d)


def _compare(ref, ours, inputs, n_new=20):
    with torch.no_grad():
        r = ref(**inputs)
        o = ours(**inputs)
    if "input_features" in inputs:
        assert o.audio_embeds.shape == r.audio_hidden_states.shape
        torch.testing.assert_close(o.audio_embeds, r.audio_hidden_states, atol=ATOL, rtol=0)
    valid = inputs["attention_mask"].bool()
    assert r.logits.abs().max() > 1.0  # the comparison is meaningful
    torch.testing.assert_close(o.logits[valid], r.logits[valid], atol=ATOL, rtol=0)
    gen_ref = ref.generate(**inputs, max_new_tokens=n_new, do_sample=False, min_new_tokens=n_new)
    gen_ours = ours.generate(**inputs, max_new_tokens=n_new, do_sample=False, eos_token_id=[])
    assert gen_ours.tolist() == gen_ref.tolist()


def test_65_second_audio_three_windows(pair):
    kind, ref, ours, proc, hf_proc = pair
    wave = tone_mix(65.0)
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is this?"}]}],
                                    tokenize=False)
    inputs = proc(text, audio=[wave])
    hf_inputs = hf_proc(text=[text], audio=[wave])
    assert inputs["input_features"].shape == (3, 128, 3000)
    assert inputs["input_features_mask"].sum(-1).tolist() == [3000, 3000, 500]
    assert inputs["input_ids"].tolist() == hf_inputs["input_ids"].tolist()
    torch.testing.assert_close(inputs["input_features"], hf_inputs["input_features"], atol=ATOL, rtol=0)
    _compare(ref, ours, dict(inputs))


def test_padded_batch_of_two_audio_lengths(pair):
    kind, ref, ours, proc, hf_proc = pair
    waves = [tone_mix(7.3, seed=1), tone_mix(41.0, seed=2)]
    texts = [proc.apply_chat_template([{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": q}]}],
                                      tokenize=False) for q in ("Describe it.", "How many beeps are there in total?")]
    inputs = proc(texts, audio=waves)
    hf_inputs = hf_proc(text=texts, audio=waves)
    assert inputs["attention_mask"][0, 0] == 0  # left padding present
    for key in ("input_ids", "attention_mask", "input_features_mask"):
        assert inputs[key].tolist() == hf_inputs[key].tolist()
    _compare(ref, ours, dict(inputs))


def test_two_audios_in_one_prompt(pair):
    kind, ref, ours, proc, _ = pair
    conv = [{"role": "user", "content": [{"type": "audio", "audio": tone_mix(12.0, seed=3)},
                                         {"type": "audio", "audio": tone_mix(35.0, seed=4)},
                                         {"type": "text", "text": "Which clip is longer?"}]}]
    inputs = proc.apply_chat_template(conv)
    ids = inputs["input_ids"][0]
    runs = torch.diff(torch.nn.functional.pad((ids == proc.audio_token_id).int(), (1, 1)))
    # AF-Next: bos/eos split the two placeholder runs, so RoTE window indices restart for the second
    # audio; AF3 (no bos/eos, no RoTE) concatenates them into one run.
    assert (runs == 1).sum() == (2 if kind == "afnext" else 1)
    assert int((ids == proc.audio_token_id).sum()) == 300 + 750 + 125
    _compare(ref, ours, dict(inputs))


def test_text_only_prompt(pair):
    kind, ref, ours, proc, hf_proc = pair
    conv = [{"role": "user", "content": "Name three musical instruments."}]
    inputs = proc.apply_chat_template(conv)
    hf_inputs = hf_proc.apply_chat_template(conv, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert inputs["input_ids"].tolist() == hf_inputs["input_ids"].tolist()
    _compare(ref, ours, dict(inputs))


def test_saved_checkpoint_round_trips_and_loads_in_transformers(pair, tmp_path):
    from safetensors.torch import load_file

    kind, ref, ours, proc, _ = pair
    ours.save_pretrained(tmp_path)
    again = AFNext.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    saved = load_file(str(tmp_path / "model.safetensors"))
    ref_sd = ref.state_dict()
    # every reference tensor is in the file, bit-exact, under the checkpoint's key layout
    reloaded = type(ref).from_pretrained(tmp_path).eval()
    for name, t in reloaded.state_dict().items():
        assert torch.equal(t, ref_sd[name]), name
    assert len(saved) == len([k for k in ref_sd if "rotary" not in k and "pos_emb" not in k])


def test_sharded_save_loads(pair, tmp_path):
    kind, ref, ours, proc, _ = pair
    ours.save_pretrained(tmp_path, max_shard_bytes=200_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    again = AFNext.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    reloaded = type(ref).from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.lm_head.weight, ref.lm_head.weight, atol=0, rtol=0)


def test_zero_token_tail_window_belongs_to_its_own_audio():
    """A clip ending <= 20 ms past a 30-s boundary gets a last window with no tokens. It must not shift the
    next audio's window indices (the reference assigns it to the next audio, a 30-s timestamp error)."""
    from afnext.model.rote import window_index_per_row

    sound = 9
    ids = torch.tensor([[1, 2] + [sound] * 750 + [3, 2] + [sound] * 75 + [3]])
    index = window_index_per_row(ids, sound, torch.tensor([750, 0, 75]))
    assert index.tolist() == [0, 1, 0]
    # the ordinary cases are unchanged
    ids = torch.tensor([[2] + [sound] * 1500 + [3, 2] + [sound] * 125 + [3]])
    assert window_index_per_row(ids, sound, torch.tensor([750, 750, 125])).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="does not line up with whole 30-s windows"):
        window_index_per_row(ids, sound, torch.tensor([750, 700, 175]))


@pytest.mark.parametrize("seconds,sub_batch", [(5.0, 8), (65.0, 1)])
def test_trimmed_windows_match_reference(pair, seconds, sub_batch):
    """The encoder trims the zero-padding tail of short windows (a 5-s clip costs a sixth of a window);
    the reference always runs full 30-s windows. Valid outputs must be the same."""
    kind, ref, ours, proc, hf_proc = pair
    conv = [{"role": "user", "content": [{"type": "audio", "audio": tone_mix(seconds, seed=7)},
                                         {"type": "text", "text": "What do you hear?"}]}]
    inputs = proc.apply_chat_template(conv)
    old = ours.encoder_batch_windows
    ours.encoder_batch_windows = sub_batch  # 1: the partial last window of 65 s is encoded (and trimmed) alone
    try:
        _compare(ref, ours, dict(inputs), n_new=5)
    finally:
        ours.encoder_batch_windows = old
