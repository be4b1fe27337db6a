"""The generation engine (afnext.engine) on tiny random checkpoints.

What is checked, and against what:
- a left-padded batch decodes every row exactly as that request decodes alone (greedy, sampling with
  per-row seeds, repetition penalty), and a row's repetition-penalty set holds its own real tokens only;
- the logits the engine samples from at step k equal a full forward pass over prompt + k generated
  tokens (the KV cache changes nothing), chunked prefill changes nothing, and encoding audio windows
  one at a time gives the same embeddings as eight at a time;
- sampling is reproducible per seed, and temperature / top-k / top-p / repetition penalty equal
  transformers' logits processors, alone and in the engine's order at every decoding step;
- greedy decoding with repetition_penalty=1.2 equals transformers' generate on the same checkpoint;
- stop conditions: end tokens, max_new_tokens, stop strings (cut text, streamed deltas that never show
  the stop string), `Engine.stream`;
- configuration and input errors carry messages that say what is wrong.
"""

from __future__ import annotations

import pytest
import torch

import afnext.engine as engine_mod
from afnext import AFNext, Processor
from afnext.engine import Engine, GenerationConfig, apply_repetition_penalty, filter_top_k_top_p
from afnext.tokenizer import IncrementalDecoder
from conftest import tone_mix

ATOL = 1e-4

# (audio seconds, audio seed, question): different audio lengths (125 / 312 / 200 placeholders) and
# question lengths, so every row of the batch has a different amount of left padding. The third
# question holds "!" (token id 0), the id the engine once scattered padded positions onto (as False)
# when building the repetition-penalty set.
SPECS = [
    (5.0, 1, "Describe it."),
    (12.5, 2, "How many beeps are there in total, and when does the chirp start?"),
    (8.0, 3, "Hi!"),
]


def _conversation(seconds: float, seed: int, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "audio": tone_mix(seconds, seed=seed)},
                                         {"type": "text", "text": question}]}]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are microseconds long: with a second intra-op thread, every op waits on it,
    and on a loaded 2-core machine decoding ran 30x slower. Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def afn(tiny_dirs):
    model = AFNext.from_pretrained(tiny_dirs["afnext"], dtype=torch.float32).eval()
    proc = Processor.from_pretrained(tiny_dirs["afnext"])
    return model, proc, Engine(model, proc.tokenizer)


@pytest.fixture(scope="module")
def batch(afn):
    _, proc, _ = afn
    return proc.apply_chat_template([_conversation(*s) for s in SPECS])


@pytest.fixture(scope="module")
def singles(afn):
    _, proc, _ = afn
    return [proc.apply_chat_template(_conversation(*s)) for s in SPECS]


@pytest.fixture(scope="module")
def single(singles):
    return singles[0]


class Recorder:
    """Wraps engine-module functions to record what the decoding loop passes through them."""

    def __init__(self, monkeypatch):
        self.logits, self.seen, self.filtered = [], [], []
        penalty, filt = engine_mod.apply_repetition_penalty, engine_mod.filter_top_k_top_p

        def record_penalty(logits, seen, p):
            self.logits.append(logits.clone())
            self.seen.append(seen.clone())
            return penalty(logits, seen, p)

        def record_filter(logits, top_k, top_p):
            out = filt(logits, top_k, top_p)
            self.filtered.append(out.clone())
            return out

        monkeypatch.setattr(engine_mod, "apply_repetition_penalty", record_penalty)
        monkeypatch.setattr(engine_mod, "filter_top_k_top_p", record_filter)


def _gen(eng: Engine, inputs, **kw):
    return eng.generate(inputs, GenerationConfig.from_model(eng.model, **kw))


# ---- 1. batched == unbatched ----------------------------------------------------------------------------
BATCH_CASES = {
    "greedy": dict(max_new_tokens=16),
    "sampling": dict(max_new_tokens=16, do_sample=True, temperature=0.8, top_k=50, top_p=0.9, seed=1234),
    "repetition_penalty": dict(max_new_tokens=16, repetition_penalty=1.2),
    "sampling_penalty_per_row_seeds": dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_k=50, top_p=0.9,
                                           repetition_penalty=1.2, seed=[11, 22, 33]),
}


@pytest.mark.parametrize("case", list(BATCH_CASES))
def test_batched_rows_equal_each_request_alone(afn, batch, singles, case):
    _, _, eng = afn
    kw = BATCH_CASES[case]
    mask = batch["attention_mask"]
    pads = (mask == 0).sum(-1).tolist()
    assert len(set(pads)) == 3 and min(pads) == 0  # every row padded differently, one not at all
    together = _gen(eng, batch, **kw)
    for row, inputs in enumerate(singles):
        row_kw = dict(kw, seed=kw["seed"][row]) if isinstance(kw.get("seed"), list) else kw
        alone = _gen(eng, inputs, **row_kw)[0]
        assert together[row].token_ids == alone.token_ids, f"row {row} differs from its unbatched run"
        assert together[row].text == alone.text
        assert together[row].finish_reason == alone.finish_reason
        assert together[row].prompt_tokens == inputs["input_ids"].shape[1]
        assert together[row].audio_tokens == int((inputs["input_ids"] == afn[0].config.audio_token_id).sum())
    assert len(together[0].token_ids) > 0
    if kw.get("do_sample"):  # rows really are sampled from their own streams, not one shared draw
        assert len({tuple(r.token_ids) for r in together}) == 3


def test_repetition_penalty_sees_only_each_rows_real_tokens(afn, batch, monkeypatch):
    """The penalty set of a padded row is exactly its prompt's real ids (plus what it generated), never the
    pad id the padding is made of (the reference penalises it, which leaks padding into a row's output)."""
    model, proc, eng = afn
    rec = Recorder(monkeypatch)
    out = _gen(eng, batch, max_new_tokens=3, repetition_penalty=1.2, eos_token_id=[])
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    pad = proc.pad_token_id
    assert int((ids == pad).sum()) == int((~mask).sum()) > 0  # padding is the pad id and nothing else is
    for row in range(ids.shape[0]):
        prompt = set(ids[row][mask[row]].tolist())
        assert 0 in prompt or row != 2  # "Hi!" puts id 0 among the real tokens of a padded row
        for step, seen in enumerate(rec.seen):
            expected = prompt | set(out[row].token_ids[:step])
            assert set(torch.nonzero(seen[row]).flatten().tolist()) == expected, (row, step)
        assert not rec.seen[0][row, pad]


# ---- 2. KV cache == recomputation -----------------------------------------------------------------------
def test_cached_decoding_logits_equal_full_forward(afn, batch, monkeypatch):
    model, _, eng = afn
    rec = Recorder(monkeypatch)
    n = 8
    out = _gen(eng, batch, max_new_tokens=n, eos_token_id=[])
    assert len(rec.logits) == n
    gen = torch.tensor([r.token_ids for r in out])
    with torch.no_grad():
        audio = model.encode_audio(batch["input_features"], batch["input_features_mask"], batch["input_ids"])
        prompt = model.embed_inputs(batch["input_ids"], audio)
        for k in range(n):
            # Generated ids are embedded as plain tokens (the tiny random model can emit <sound> itself,
            # which must not be taken for an audio slot), so the full pass is given embeddings.
            embeds = torch.cat([prompt, model.llm.embed_tokens(gen[:, :k])], dim=1)
            mask = torch.cat([batch["attention_mask"], torch.ones_like(gen[:, :k])], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            full = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -1]
            assert full.abs().max() > 1.0  # the comparison is meaningful
            torch.testing.assert_close(rec.logits[k], full, atol=ATOL, rtol=0, msg=f"step {k}")
            assert rec.logits[k].argmax(-1).tolist() == gen[:, k].tolist()


# ---- 3. chunked prefill, encoder sub-batches --------------------------------------------------------------
@pytest.mark.parametrize("which", ["padded_batch", "single"])
def test_chunked_prefill_changes_nothing(afn, batch, single, monkeypatch, which):
    model, proc, eng = afn
    inputs = batch if which == "padded_batch" else single
    # 609 = 87 x 7 tokens (the batch: chunk edges fall inside every row's padding or prompt);
    # 401 = 57 x 7 + 2 (the single request: a partial last chunk)
    assert inputs["input_ids"].shape[1] % 7 == (0 if which == "padded_batch" else 2)
    rec = Recorder(monkeypatch)
    default = _gen(eng, inputs, max_new_tokens=10)
    steps = len(rec.logits)
    chunked = _gen(Engine(model, proc.tokenizer, prefill_chunk=7), inputs, max_new_tokens=10)
    assert [r.token_ids for r in chunked] == [r.token_ids for r in default]
    assert [r.text for r in chunked] == [r.text for r in default]
    assert len(rec.logits) == 2 * steps
    for k in range(steps):  # the prefill's last logits, and every step decoded on top of its cache
        torch.testing.assert_close(rec.logits[steps + k], rec.logits[k], atol=ATOL, rtol=0)


def test_encoder_window_sub_batches_change_nothing(afn):
    model, proc, _ = afn
    # 40 s + 5 s: three windows (two of them partial), so sub-batches of 2 split an audio's windows.
    inputs = proc.apply_chat_template([_conversation(40.0, 4, "Long one?"), _conversation(5.0, 5, "Short one?")])
    assert inputs["input_features"].shape[0] == 3
    args = (inputs["input_features"], inputs["input_features_mask"], inputs["input_ids"])
    before = model.encoder_batch_windows
    try:
        out = {}
        for w in (8, 2, 1):
            model.encoder_batch_windows = w
            with torch.no_grad():
                out[w] = model.encode_audio(*args)
    finally:
        model.encoder_batch_windows = before
    assert out[8].shape == (int((inputs["input_ids"] == model.config.audio_token_id).sum()), model.config.llm.hidden_size)
    torch.testing.assert_close(out[1], out[8], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[2], out[8], atol=1e-5, rtol=0)


# ---- 4. sampling ------------------------------------------------------------------------------------------
def test_sampling_is_reproducible_per_seed(afn, single):
    _, _, eng = afn
    kw = dict(max_new_tokens=20, do_sample=True, temperature=1.0, eos_token_id=[])
    a = _gen(eng, single, seed=7, **kw)[0].token_ids
    b = _gen(eng, single, seed=7, **kw)[0].token_ids
    c = _gen(eng, single, seed=8, **kw)[0].token_ids
    greedy = _gen(eng, single, max_new_tokens=20, eos_token_id=[])[0].token_ids
    assert a == b
    assert a != c  # 20 draws at ~5 nats of entropy each: a collision is practically impossible
    assert a != greedy


def _hf_processors():
    from transformers import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    return RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def _seen_mask(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.zeros(ids.shape[0], vocab, dtype=torch.bool).scatter_(1, ids, True)


@pytest.mark.parametrize("penalty", [1.2, 0.8, 1.0])
def test_repetition_penalty_matches_transformers(penalty):
    pytest.importorskip("transformers")
    RepetitionPenalty, *_ = _hf_processors()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, generator=g) * 3
    logits[0, 5] = 0.0  # zero stays zero either way
    ids = torch.randint(0, 300, (4, 40), generator=g)  # with repeats
    ids[0, 0] = 5
    ours = apply_repetition_penalty(logits.clone(), _seen_mask(ids, 300), penalty)
    ref = RepetitionPenalty(penalty)(ids, logits.clone())
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    if penalty != 1.0:
        assert not torch.equal(ours, logits)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (0.8, 50, 0.9), (1.0, 0, 0.5), (1.3, 7, 1.0), (0.5, 0, 1.0), (0.7, 1, 0.9), (1.0, 1000, 0.95), (2.0, 0, 0.01),
])
def test_temperature_top_k_top_p_match_transformers(temperature, top_k, top_p):
    pytest.importorskip("transformers")
    _, Temperature, TopK, TopP = _hf_processors()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 400, generator=g) * 4
    ids = torch.zeros(5, 1, dtype=torch.long)
    ref = Temperature(temperature)(ids, logits.clone())
    if top_k:
        ref = TopK(top_k)(ids, ref)
    if top_p < 1.0:
        ref = TopP(top_p)(ids, ref)
    ours = filter_top_k_top_p(logits / temperature, top_k, top_p)
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    kept = torch.isfinite(ours).sum(-1)
    assert (kept >= 1).all()
    if top_k:
        assert (kept <= top_k).all()


@pytest.mark.parametrize("top_p", [0.5, 0.75, 0.25])
def test_top_p_boundary_ties_match_transformers(top_p):
    """Uniform logits make the cumulative probabilities exact (0.25, 0.5, ...): a token whose cumulative
    mass reaches exactly 1 - top_p is dropped, as transformers drops it."""
    pytest.importorskip("transformers")
    *_, TopP = _hf_processors()
    logits = torch.zeros(2, 4)
    ours = filter_top_k_top_p(logits, 0, top_p)
    ref = TopP(top_p)(torch.zeros(2, 1, dtype=torch.long), logits.clone())
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    assert int(torch.isfinite(ours[0]).sum()) == round(4 * top_p)


def test_engine_sampling_scores_equal_transformers_processor_chain(afn, single, monkeypatch):
    """At every step the engine samples from exactly what transformers' chain (repetition penalty,
    temperature, top-k, top-p, in generate's order) makes of the same logits and the same history."""
    pytest.importorskip("transformers")
    from transformers import LogitsProcessorList

    RepetitionPenalty, Temperature, TopK, TopP = _hf_processors()
    _, _, eng = afn
    rec = Recorder(monkeypatch)
    out = _gen(eng, single, max_new_tokens=12, do_sample=True, temperature=0.8, top_k=50, top_p=0.9,
               repetition_penalty=1.2, seed=3, eos_token_id=[])[0]
    chain = LogitsProcessorList([RepetitionPenalty(1.2), Temperature(0.8), TopK(50), TopP(0.9)])
    history = single["input_ids"]
    for k, tok in enumerate(out.token_ids):
        ref = chain(history, rec.logits[k].clone())
        torch.testing.assert_close(rec.filtered[k], ref, atol=0, rtol=0, msg=f"step {k}")
        assert torch.isfinite(ref[0, tok])  # the drawn token survived the filters
        history = torch.cat([history, torch.tensor([[tok]])], dim=1)


# ---- 5. transformers' generate on the same checkpoint ------------------------------------------------
@pytest.mark.parametrize("kind", ["afnext", "af3"])
def test_greedy_with_repetition_penalty_matches_transformers_generate(tiny_dirs, kind):
    transformers = pytest.importorskip("transformers")
    cls = (transformers.MusicFlamingoForConditionalGeneration if kind == "afnext"
           else transformers.AudioFlamingo3ForConditionalGeneration)
    ref, info = cls.from_pretrained(tiny_dirs[kind], dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ref.eval()
    model = AFNext.from_pretrained(tiny_dirs[kind], dtype=torch.float32).eval()
    proc = Processor.from_pretrained(tiny_dirs[kind])
    inputs = proc.apply_chat_template(_conversation(6.0, 9, "What do you hear?"))
    assert bool(inputs["attention_mask"].all())  # a single request: no padding
    n = 20
    with torch.no_grad():
        expected = ref.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, repetition_penalty=1.2)
    # do_sample=False: the AF3 checkpoint's generation_config.json asks for sampling by default
    ours = model.generate(**inputs, max_new_tokens=n, do_sample=False, repetition_penalty=1.2, eos_token_id=[])
    assert expected.shape[1] == inputs["input_ids"].shape[1] + n
    assert ours.tolist() == expected.tolist()
    plain = model.generate(**inputs, max_new_tokens=n, do_sample=False, eos_token_id=[])
    assert plain.tolist() != ours.tolist()  # the penalty really changed something
    res = Engine(model, proc.tokenizer).generate(inputs, GenerationConfig.from_model(
        model, max_new_tokens=n, do_sample=False, repetition_penalty=1.2, eos_token_id=[]))[0]
    assert res.token_ids == expected[0, inputs["input_ids"].shape[1]:].tolist()


# ---- 6. stop conditions -------------------------------------------------------------------------------
def test_end_token_stops_a_row_and_length_stops_the_other(afn, batch):
    _, _, eng = afn
    free = _gen(eng, batch, max_new_tokens=12, eos_token_id=[])
    assert all(r.finish_reason == "length" and len(r.token_ids) == 12 for r in free)
    toks = free[0].token_ids
    # the first token of row 0 that it had not produced before: its first occurrence is at step k
    k = next(i for i in range(3, len(toks)) if toks[i] not in toks[:i])
    eos = toks[k]
    stopped = _gen(eng, batch, max_new_tokens=12, eos_token_id=eos)
    for row, (f, s) in enumerate(zip(free, stopped)):
        if eos in f.token_ids:
            cut = f.token_ids.index(eos)
            assert s.token_ids == f.token_ids[:cut] and s.finish_reason == "stop", row
            assert s.text == eng.tokenizer.decode(f.token_ids[:cut], skip_special_tokens=True)
        else:
            assert s.token_ids == f.token_ids and s.finish_reason == "length", row
    assert stopped[0].token_ids == toks[:k] and stopped[0].finish_reason == "stop"
    # a list of end tokens: whichever comes first
    both = _gen(eng, batch, max_new_tokens=12, eos_token_id=[toks[k + 1], eos])
    first = min(toks.index(t) for t in (toks[k + 1], eos))
    assert both[0].token_ids == toks[:first] and both[0].finish_reason == "stop"
    # generate_ids (transformers-style) pads the finished row after its end token
    ids = eng.generate_ids(batch["input_ids"], batch["attention_mask"], batch["input_features"],
                           batch["input_features_mask"], max_new_tokens=12, eos_token_id=eos, pad_token_id=511)
    t = batch["input_ids"].shape[1]
    assert ids[0, t:t + k].tolist() == toks[:k] and ids[0, t + k] == eos
    assert ids[0, t + k + 1:].tolist() == [511] * (ids.shape[1] - t - k - 1)


def test_max_new_tokens_gives_length(afn, single):
    _, _, eng = afn
    for n in (1, 5):
        r = _gen(eng, single, max_new_tokens=n, eos_token_id=[])[0]
        assert len(r.token_ids) == n and r.finish_reason == "length"
        assert r.text == eng.tokenizer.decode(r.token_ids, skip_special_tokens=True)


def _token_texts(tokenizer, ids: list[int]) -> list[str]:
    dec = IncrementalDecoder(tokenizer)
    return [dec.push(t) for t in ids]


def _stop_across_token_boundary(tokenizer, ids: list[int]) -> str:
    """A 4-character stop string made of the end of one token's text and the start of the next's."""
    pieces = _token_texts(tokenizer, ids)
    for a, b in zip(pieces[2:], pieces[3:]):
        s = a[-2:] + b[:2]
        if len(a) >= 2 and len(b) >= 2 and s.isprintable() and "\ufffd" not in s:
            return s
    raise AssertionError(f"no usable token pair in {pieces!r}")


def test_stop_string_cuts_text_and_streams_without_it(afn, batch):
    _, _, eng = afn
    free = _gen(eng, batch, max_new_tokens=30, eos_token_id=[])
    full = free[0].text
    assert full == eng.tokenizer.decode(free[0].token_ids, skip_special_tokens=True)
    stop = _stop_across_token_boundary(eng.tokenizer, free[0].token_ids)
    cut = full.index(stop)

    deltas: dict[int, list[str]] = {0: [], 1: [], 2: []}
    out = eng.generate(batch, GenerationConfig.from_model(eng.model, max_new_tokens=30, eos_token_id=[],
                                                          stop_strings=[stop]),
                       on_delta=lambda row, d: deltas[row].append(d))
    assert out[0].text == full[:cut] and out[0].finish_reason == "stop"
    assert out[0].token_ids == free[0].token_ids[:len(out[0].token_ids)]
    # generation stopped at the token that completed the stop string, not later
    n = len(out[0].token_ids)
    assert stop in eng.tokenizer.decode(free[0].token_ids[:n], skip_special_tokens=True)
    assert stop not in eng.tokenizer.decode(free[0].token_ids[:n - 1], skip_special_tokens=True)
    for row in range(3):
        assert "".join(deltas[row]) == out[row].text, row
        assert all(stop not in d for d in deltas[row])
        assert all(d for d in deltas[row])  # no empty deltas
        if stop not in free[row].text:  # other rows run on untouched
            assert out[row].text == free[row].text and out[row].finish_reason == "length"
    assert len(deltas[0]) > 1


def test_held_back_stop_prefix_is_released_when_it_does_not_complete(afn, single):
    """A tail that could start a stop string is held back from the stream, and handed out once the
    stop string fails to complete; the returned and streamed text are then the whole text."""
    _, _, eng = afn
    free = _gen(eng, single, max_new_tokens=20, eos_token_id=[])[0]
    pieces = _token_texts(eng.tokenizer, free.token_ids)
    j = next(i for i, p in enumerate(pieces[:-3]) if len(p) >= 2 and pieces[i + 1])
    stop = pieces[j][-2:] + "\x00never"
    deltas = []
    out = eng.generate(single, GenerationConfig.from_model(eng.model, max_new_tokens=20, eos_token_id=[],
                                                           stop_strings=[stop]),
                       on_delta=lambda _r, d: deltas.append(d))[0]
    assert out.text == free.text and out.finish_reason == "length"
    assert "".join(deltas) == free.text
    emitted = "".join(pieces[:j + 1])
    assert not any("".join(deltas[:i]) == emitted for i in range(len(deltas) + 1))  # that prefix was held


def test_stream_deltas_equal_generate_text(afn, single):
    _, _, eng = afn
    cfg = GenerationConfig.from_model(eng.model, max_new_tokens=15, eos_token_id=[])
    whole = eng.generate(single, cfg)[0]
    deltas = list(eng.stream(single, cfg))
    assert len(deltas) > 1 and "".join(deltas) == whole.text
    assert eng.last_result.token_ids == whole.token_ids
    # with a stop string too
    stop = _stop_across_token_boundary(eng.tokenizer, whole.token_ids)
    cfg = GenerationConfig.from_model(eng.model, max_new_tokens=15, eos_token_id=[], stop_strings=stop)
    deltas = list(eng.stream(single, cfg))
    assert "".join(deltas) == whole.text[:whole.text.index(stop)] == eng.last_result.text
    assert eng.last_result.finish_reason == "stop"


def test_stream_takes_one_request(afn, batch):
    with pytest.raises(ValueError, match="one request"):
        next(afn[2].stream(batch))


# ---- 7. configuration errors --------------------------------------------------------------------------
@pytest.mark.parametrize("kw,error,message", [
    (dict(max_new_tokens=0), ValueError, "max_new_tokens must be >= 1, got 0"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\], got 1.5"),
    (dict(top_k=-1), ValueError, "top_k must be >= 0, got -1"),
    (dict(do_sample=True, temperature=0.0), ValueError, "temperature must be > 0 when sampling"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty must be > 0"),
    (dict(max_tokens=5), TypeError, "unknown generation option.*max_tokens"),
    (dict(topk=5, beams=2), TypeError, "unknown generation option.*beams, topk"),
])
def test_generation_config_errors(afn, single, kw, error, message):
    model, _, eng = afn
    with pytest.raises(error, match=message):
        GenerationConfig.from_model(model, **kw)
    with pytest.raises(error, match=message):  # the transformers-style entry point validates too
        model.generate(**single, **kw)
    if error is ValueError:  # a config built directly is checked as well (it once was not)
        with pytest.raises(error, match=message):
            GenerationConfig(**kw)


def test_directly_built_config_takes_a_plain_stop_string(afn, single):
    """GenerationConfig(stop_strings="px") means the string "px", not the characters "p" and "x"."""
    _, _, eng = afn
    free = eng.generate(single, GenerationConfig(max_new_tokens=12))[0]
    stop = _stop_across_token_boundary(eng.tokenizer, free.token_ids)
    cfg = GenerationConfig(max_new_tokens=12, stop_strings=stop)
    assert cfg.stop_strings == [stop]
    out = eng.generate(single, cfg)[0]
    assert out.text == free.text[:free.text.index(stop)] and out.finish_reason == "stop"


def test_generation_config_takes_checkpoint_defaults(afn, tiny_dirs):
    model, _, _ = afn
    cfg = GenerationConfig.from_model(model)
    assert cfg.max_new_tokens == 2048 and cfg.eos_ids(model) == [model.config.llm.eos_token_id]
    assert GenerationConfig.from_model(model, max_new_tokens=None).max_new_tokens == 2048  # None = default
    assert GenerationConfig.from_model(model, stop_strings="END").stop_strings == ["END"]


# ---- 8. bad model inputs ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["afnext", "af3"])
def test_placeholder_count_mismatch_is_an_error(tiny_dirs, kind):
    model = AFNext.from_pretrained(tiny_dirs[kind], dtype=torch.float32).eval()
    proc = Processor.from_pretrained(tiny_dirs[kind])
    inputs = proc.apply_chat_template(_conversation(5.0, 1, "Hi"))
    ids = inputs["input_ids"]
    slots = torch.nonzero(ids[0] == model.config.audio_token_id).flatten()
    keep = torch.ones(ids.shape[1], dtype=torch.bool)
    keep[slots[-1]] = False  # one <sound> fewer than the audio yields
    fewer = dict(inputs, input_ids=ids[:, keep], attention_mask=inputs["attention_mask"][:, keep])
    extra = torch.cat([ids[:, :slots[0]], ids[:, slots[:1]], ids[:, slots[0]:]], dim=1)  # one more
    more = dict(inputs, input_ids=extra, attention_mask=torch.ones_like(extra))
    text_only = dict(inputs, input_ids=proc.apply_chat_template([{"role": "user", "content": "Hi"}])["input_ids"])
    text_only["attention_mask"] = torch.ones_like(text_only["input_ids"])
    for bad in (fewer, more, text_only):
        with torch.no_grad(), pytest.raises(ValueError, match="do not match"):
            model(**bad)
        with pytest.raises(ValueError, match="do not match"):
            Engine(model, proc.tokenizer).generate(bad, GenerationConfig.from_model(model, max_new_tokens=2))
    with torch.no_grad(), pytest.raises(ValueError, match="do not match"):  # placeholders but no audio
        model(input_ids=ids, attention_mask=inputs["attention_mask"])
