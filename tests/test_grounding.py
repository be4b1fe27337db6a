"""The grounding loss (afnext.train.grounding): its target spans, its value against the model's own
attention, and its wiring into the trainer (spans found, loss reported, gradient where it should be)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import train_helpers as th
from afnext.model.attention import AttentionMask


def test_asked_events_reads_only_grounded_tasks():
    from afnext.train.grounding import asked_events

    assert asked_events({"task": "event_onset", "labels": {"onset_s": 12.4, "target": "siren"}}) == [(12.4, "siren")]
    assert asked_events({"task": "event_onset", "labels": {"onset_s": 12.4, "target": "knock"}}) == [(12.4, "knocking")]
    assert asked_events({"task": "event_span", "labels": {"onset_s": 12.4}}) == []
    assert asked_events({"task": "event_onset", "labels": {}}) == [(None, None)]
    assert asked_events({"task": "event_onset", "labels": {"onset_s": float("nan")}}) == [(None, None)]
    assert asked_events({"task": "event_onset_all", "labels": {"asked": [
        {"label": "siren", "onset_s": 3.2}, {"label": "bell", "onset_s": -1}]}}) == [(3.2, "siren"), (None, "bell")]
    assert asked_events(None) == []


def test_answer_spans_and_ground_sample_pair_each_answer_with_its_event():
    from afnext.train.grounding import Ground, answer_spans, ground_sample

    A, X = 7, -100
    #        0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15
    ids = torch.tensor([1, A, A, A, A, A, A, A, A, 2, 30, 5, 31, 3, 40, 6])
    labels = torch.tensor([X, X, X, X, X, X, X, X, X, X, X, 5, X, X, X, 6])
    assert answer_spans(labels) == [(11, 12), (15, 16)]
    encode = {" siren": [30], " glass": [40]}.__getitem__
    grounds = ground_sample(ids, labels, A, [(0.04, "siren"), (0.2, "glass")], encode)
    assert grounds == [Ground((11, 12), (2, 5), (10, 11)), Ground((15, 16), (6, 9), (14, 15))]
    assert ground_sample(ids, labels, A, [(0.04, "siren")], encode) == []  # answers and events do not pair up
    assert ground_sample(ids, labels, A, [(None, "siren"), (0.2, None)], encode) == [Ground((15, 16), (6, 9), None)]
    assert ground_sample(ids, labels, A, [(0.04, "siren"), (0.2, "glass")]) == [
        Ground((11, 12), (2, 5)), Ground((15, 16), (6, 9))]


def test_grounding_span_covers_the_onset_tokens():
    from afnext.train.grounding import grounding_span

    A = 7
    ids = torch.tensor([1, 2] + [A] * 100 + [3, 4])  # audio tokens at positions 2..101 (4 s)
    assert grounding_span(ids, A, 1.0) == (2 + 25, 2 + 28)  # 1.00-1.12 s: tokens 25, 26, 27
    assert grounding_span(ids, A, 1.01) == (2 + 25, 2 + 29)  # 1.01-1.13 s touches token 28 too
    assert grounding_span(ids, A, 0.0) == (2, 5)
    assert grounding_span(ids, A, 3.96) == (2 + 99, 2 + 100)  # clipped at the audio's end
    assert grounding_span(ids, A, 4.0) is None  # beyond the audio (e.g. cut by a cap)
    two_runs = torch.tensor([A] * 10 + [1] + [A] * 10)
    assert grounding_span(two_runs, A, 0.1) is None  # which audio is meant is not known
    assert grounding_span(torch.tensor([1, 2, 3]), A, 0.1) is None


def test_probe_equals_attention_mass_of_the_models_own_forward(tiny_dirs):
    """-log mass from the probe equals -log of what the attention module itself puts on the span,
    read off its real forward (RoPE, grouped-query heads, packed block-causal mask) by feeding values
    that are 1 on the span and 0 elsewhere."""
    from afnext.model.afnext import AFNext
    from afnext.train.grounding import GroundingProbe

    torch.manual_seed(0)
    model = AFNext.from_pretrained(tiny_dirs["afnext"], dtype=torch.float32).eval()
    llm = model.llm
    attn = llm.layers[-1].self_attn
    hidden, d = llm.norm.weight.numel(), attn.head_dim
    cu = torch.tensor([0, 25, 40], dtype=torch.int32)
    position_ids = torch.cat([torch.arange(25), torch.arange(15)])[None]
    x = torch.randn(1, 40, hidden)
    cos, sin = llm.rotary(position_ids, torch.float32)
    mask = AttentionMask(causal=True, cu_seqlens=cu)
    targets = [(torch.tensor([20, 21, 24]), 5, 8, 0), (torch.tensor([36, 39]), 27, 31, 25)]
    for head in range(attn.heads):
        probe = GroundingProbe([head], targets)
        with torch.no_grad():
            probe(attn, (x, cos, sin, mask, None), None)
        v_proj, o_proj = attn.v_proj, attn.o_proj
        try:
            for (queries, lo, hi, _), got in zip(targets, probe.losses):
                indicator = torch.zeros(1, 40, attn.kv_heads * d)
                indicator[0, lo:hi] = 1.0
                attn.v_proj = _Const(indicator)
                attn.o_proj = torch.nn.Identity()
                with torch.no_grad():
                    out = attn(x, cos, sin, mask, None)  # (1, T, heads * d): each head's mass on the span
                mass = out[0, queries, head * d]
                assert (mass > 0).all() and (mass < 1).all()
                torch.testing.assert_close(got, -torch.log(mass).mean(), atol=1e-5, rtol=1e-5)
        finally:
            attn.v_proj, attn.o_proj = v_proj, o_proj
    # several heads: the mean of their single-head losses
    both = GroundingProbe([0, attn.heads - 1], targets)
    first, last = GroundingProbe([0], targets), GroundingProbe([attn.heads - 1], targets)
    with torch.no_grad():
        for probe in (both, first, last):
            probe(attn, (x, cos, sin, mask, None), None)
    for b, f, l in zip(both.losses, first.losses, last.losses):
        torch.testing.assert_close(b, (f + l) / 2, atol=1e-6, rtol=1e-6)


class _Const(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, _x):
        return self.value


def _onset_corpus(root, task="event_onset", labels=None, conversations=None):
    """The trainer-test corpus with its audio rows turned into grounded onset questions: by default one
    unnamed onset at 0.5 s; else ``task``, ``labels`` and, when given, the whole ``conversations``."""
    registry = th.make_corpus(root)
    manifest = root / "train.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        if "sound" in r:
            r.update(task=task, labels=labels or {"onset_s": 0.5})
            if conversations:
                r["conversations"] = conversations
            else:
                r["conversations"][1]["value"] = "0.5s"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return registry


def _labelled(batch):
    """Flat positions of a packed row whose next token is labelled (the trainer's query positions)."""
    target = batch["labels"][:, 1:].reshape(-1)
    return torch.nonzero(target != -100).squeeze(1)


def test_trainer_grounds_onset_samples_and_reports_the_loss(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    registry = _onset_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "g.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=1)
    trainer = Trainer(TrainConfig.load(cfg, ["optim.grounding_weight=1.0", "optim.grounding_layer=1",
                                             'optim.loss_norm="sample"']), progress=False)
    samples = trainer._next_samples(8)
    audio_id = trainer.model.config.audio_token_id
    grounded = [s for s in samples if s.grounds]
    assert grounded and all(not s.grounds for s in samples if not (s.input_ids == audio_id).any())
    for s in grounded:  # [0.5, 0.62) s overlaps tokens 12 (0.48-0.52 s) to 15 (0.60-0.64 s)
        first = int((s.input_ids == audio_id).nonzero()[0])
        (g,) = s.grounds
        assert g.onset == (first + 12, first + 16) and g.word is None  # no label layer: no word looked up

    # The loss adds weight x (-log mass) per grounded sample. It reaches the supervised layer's query
    # projection (keys get none yet: the scratch init has zero queries, see init_uniform_attention),
    # never the values or the LM head.
    batch = trainer._micro_batches(grounded)[0]
    diff = th.grad_change(trainer, batch, "grounding_weight", 0.0)
    assert diff["llm.layers.1.self_attn.q_proj.weight"] > 1e-6
    assert diff["llm.layers.1.self_attn.k_proj.weight"] == 0.0
    assert diff["llm.layers.1.self_attn.v_proj.weight"] == 0.0  # the mass does not depend on values
    assert diff["lm_head.weight"] == 0.0

    record = trainer.train_step()
    assert record["loss_ground"] is not None and 0 < record["loss_ground"] < 50
    # at step 0 the mass is ~ span / visible keys: -log of it is near log(keys / 3)
    assert math.isfinite(record["loss"])


def test_grounding_options_are_validated(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig, TrainConfigError
    from afnext.train.loop import Trainer, TrainError

    registry = _onset_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "g.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=1)
    with pytest.raises(TrainConfigError, match="optim.grounding_weight must be a finite number >= 0, got -1.0"):
        TrainConfig.load(cfg, ["optim.grounding_weight=-1.0"])
    with pytest.raises(TrainConfigError, match="optim.grounding_weight is not supported with sequence parallelism"):
        TrainConfig.load(cfg, ["optim.grounding_weight=1.0", "system.sp_ring=2"])
    with pytest.raises(TrainConfigError, match="not supported with system.activation_checkpointing"):
        TrainConfig.load(cfg, ["optim.grounding_weight=1.0", "system.activation_checkpointing=true"])
    with pytest.raises(TrainError, match=r"optim.grounding_layer=2: the LLM has layers 0..1"):
        Trainer(TrainConfig.load(cfg, ["optim.grounding_weight=1.0", "optim.grounding_layer=2"]), progress=False)
    with pytest.raises(TrainError, match=r"optim.grounding_heads=\[0, 9\]: the LLM has heads 0..\d"):
        Trainer(TrainConfig.load(cfg, ["optim.grounding_weight=1.0", "optim.grounding_heads=[0, 9]"]), progress=False)


def test_word_grounding_sends_the_event_word_to_the_onset_and_the_answer_to_the_word(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig, TrainConfigError
    from afnext.train.loop import Trainer

    registry = _onset_corpus(tmp_path / "data", labels={"onset_s": 0.5, "target": "siren"},
                             conversations=[{"from": "human", "value": "<sound>\nWhen does the siren start?"},
                                            {"from": "gpt", "value": "0.5s"}])
    cfg = th.write_config(tmp_path / "w.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=1)
    with pytest.raises(TrainConfigError, match="optim.grounding_mode = 'word' needs optim.grounding_label_layer >= 0"):
        TrainConfig.load(cfg, ["optim.grounding_weight=1.0", 'optim.grounding_mode="word"'])
    with pytest.raises(TrainConfigError, match="optim.grounding_mode must be 'answer' or 'word', got 'noun'"):
        TrainConfig.load(cfg, ['optim.grounding_mode="noun"'])
    trainer = Trainer(TrainConfig.load(cfg, ["optim.grounding_weight=1.0", "optim.grounding_layer=1",
                                             "optim.grounding_label_layer=0", 'optim.grounding_mode="word"',
                                             'optim.loss_norm="sample"']), progress=False)
    samples = [s for s in trainer._next_samples(8) if s.grounds]
    assert samples and all(g.word is not None for s in samples for g in s.grounds)
    word = trainer.processor.tokenizer.encode(" siren")
    for s in samples:
        assert s.input_ids[s.grounds[0].word[0]: s.grounds[0].word[1]].tolist() == word
    batch = trainer._micro_batches(samples[:1])[0]
    probes = trainer._word_probes(batch, _labelled(batch))
    (layer0, to_onset), (layer1, to_word) = probes
    assert layer0 is trainer.model.llm.layers[0].self_attn and layer1 is trainer.model.llm.layers[1].self_attn
    (g,) = samples[0].grounds
    (q, lo, hi, start), = to_onset.targets
    assert q.tolist() == [g.word[1] - 1] and (lo, hi, start) == (*g.onset, 0)
    (q, lo, hi, _), = to_word.targets
    # the logits predicting the answer's tokens, all after the word
    assert (lo, hi) == g.word and q.tolist() == list(range(g.answer[0] - 1, g.answer[1] - 1)) and int(q.min()) > g.word[1]

    diff = th.grad_change(trainer, batch, "grounding_weight", 0.0)
    assert diff["llm.layers.0.self_attn.q_proj.weight"] > 1e-6  # the word's look at the onset
    assert diff["llm.layers.1.self_attn.q_proj.weight"] > 1e-6  # the answer's look at the word
    record = trainer.train_step()
    assert record["loss_ground"] is not None and 0 < record["loss_ground"] < 50


def test_word_grounding_grounds_every_answer_of_a_multi_turn_conversation(tmp_path, tiny_dirs):
    """event_onset_all rows: answer k looks at the word of question k, that word at event k's onset."""
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    registry = _onset_corpus(tmp_path / "data", "event_onset_all",
                             {"asked": [{"label": "siren", "onset_s": 1.0}, {"label": "bell", "onset_s": 0.2}]},
                             [{"from": "human", "value": "<sound>\nWhen does the siren start?"},
                              {"from": "gpt", "value": "1.0s"},
                              {"from": "human", "value": "When does the bell start?"},
                              {"from": "gpt", "value": "0.2s"}])
    cfg = th.write_config(tmp_path / "w.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=1)
    trainer = Trainer(TrainConfig.load(cfg, ["optim.grounding_weight=1.0", "optim.grounding_layer=1",
                                             "optim.grounding_label_layer=0", 'optim.grounding_mode="word"',
                                             "optim.read_batch=4"]),
                      progress=False)
    samples = [s for s in trainer._next_samples(8) if s.grounds]
    assert samples
    audio_id = trainer.model.config.audio_token_id
    tok = trainer.processor.tokenizer
    for s in samples:
        first = int((s.input_ids == audio_id).nonzero()[0])
        siren, bell = s.grounds
        assert siren.onset == (first + 25, first + 28) and bell.onset == (first + 5, first + 8)
        assert s.input_ids[siren.word[0]: siren.word[1]].tolist() == tok.encode(" siren")
        assert s.input_ids[bell.word[0]: bell.word[1]].tolist() == tok.encode(" bell")
        assert siren.word[1] <= siren.answer[0] < bell.word[0] < bell.word[1] <= bell.answer[0]
        assert tok.decode(s.input_ids[siren.answer[0]: siren.answer[1]]).startswith("1.0s")
        assert tok.decode(s.input_ids[bell.answer[0]: bell.answer[1]]).startswith("0.2s")
    batch = trainer._micro_batches(samples[:2])[0]
    starts = batch["cu_seqlens"].tolist()
    (_, to_onset), (_, to_word) = trainer._word_probes(batch, _labelled(batch))
    packed = [(g, starts[i]) for i, s in enumerate(samples[:2]) for g in s.grounds]
    assert len(to_onset.targets) == len(to_word.targets) == len(packed) == 4
    for (g, s0), (q, lo, hi, start), (qw, wlo, whi, wstart) in zip(packed, to_onset.targets, to_word.targets):
        assert q.tolist() == [g.word[1] - 1 + s0] and (lo, hi, start) == (g.onset[0] + s0, g.onset[1] + s0, s0)
        assert qw.tolist() == list(range(g.answer[0] - 1 + s0, g.answer[1] - 1 + s0))
        assert (wlo, whi, wstart) == (g.word[0] + s0, g.word[1] + s0, s0)
    record = trainer.train_step()  # with time reads too: their forward runs without the probes
    assert record["loss_ground"] is not None and 0 < record["loss_ground"] < 50
    assert record["loss_read"] is not None and math.isfinite(record["loss_read"])


def test_word_time_head_reads_the_onset_digits_at_the_event_word(tmp_path, tiny_dirs):
    """optim.word_time_weight: a digit head at each asked event's word (after the label layer) learns that
    event's onset time; its gradient stops at the label layer, it is reported, and resume restores it."""
    from afnext.train.config import TrainConfig, TrainConfigError
    from afnext.train.encoder_pretrain import index_time_digits
    from afnext.train.loop import TrainError, Trainer

    registry = _onset_corpus(tmp_path / "data", "event_onset_all",
                             {"asked": [{"label": "siren", "onset_s": 1.3}, {"label": "bell", "onset_s": 0.2}]},
                             [{"from": "human", "value": "<sound>\nWhen does the siren start?"},
                              {"from": "gpt", "value": "1.3s"},
                              {"from": "human", "value": "When does the bell start?"},
                              {"from": "gpt", "value": "0.2s"}])
    word = ["optim.grounding_weight=1.0", "optim.grounding_layer=1", "optim.grounding_label_layer=0",
            'optim.grounding_mode="word"']

    def cfg(name: str, steps: int = 3):
        return th.write_config(tmp_path / f"{name}.toml", registry=registry, processor=tiny_dirs["afnext"],
                               out_dir=tmp_path / name, max_steps=steps)

    trainer = Trainer(TrainConfig.load(cfg("run"), word + ["optim.word_time_weight=1.0"]), progress=False)
    samples = [s for s in trainer._next_samples(8) if s.grounds][:2]
    batch = trainer._micro_batches(samples)[0]
    starts = batch["cu_seqlens"].tolist()
    positions, index = trainer._word_time_targets(batch, batch["input_ids"])
    packed = [(g, starts[i]) for i, s in enumerate(samples) for g in s.grounds]
    assert len(packed) == 4 and positions.tolist() == [g.word[1] - 1 + s0 for g, s0 in packed]
    assert index.tolist() == [32, 5, 32, 5]  # 1.3 s and 0.2 s in 40-ms tokens
    assert index_time_digits(index).tolist() == [[0, 1, 2], [0, 0, 2]] * 2  # 1.28 s and 0.20 s, as tenths

    first = trainer.train_step()
    assert first["loss_word_time"] == pytest.approx(math.log(10), rel=1e-6)  # a zero head: uniform digits
    diff = th.grad_change(trainer, batch, "word_time_weight", 0.0)
    assert diff["llm.layers.0.self_attn.v_proj.weight"] > 1e-7  # what the word's look-up carries
    assert max(v for n, v in diff.items() if n.startswith("adapter.")) > 1e-9
    assert all(v == 0.0 for n, v in diff.items() if n.startswith(("llm.layers.1.", "llm.layers.2.", "llm.norm", "lm_head")))
    trainer.save()
    later = trainer.train_step()
    assert later["loss_word_time"] < first["loss_word_time"]
    resumed = Trainer(TrainConfig.load(cfg("run"), word + ["optim.word_time_weight=1.0"]), resume=True, progress=False)
    again = resumed.train_step()
    assert again["loss"] == later["loss"] and again["loss_word_time"] == later["loss_word_time"]
    assert torch.equal(resumed._word_time_head.linear.weight, trainer._word_time_head.linear.weight)

    plain = Trainer(TrainConfig.load(cfg("plain"), word), progress=False)
    assert "loss_word_time" not in plain.train_step()
    plain.save()
    with pytest.raises(TrainError, match="was saved without optim.word_time_weight; its head cannot be restored"):
        Trainer(TrainConfig.load(cfg("plain"), word + ["optim.word_time_weight=1.0"]), resume=True, progress=False)
    with pytest.raises(TrainConfigError, match=r"optim.word_time_weight must be a finite number >= 0, got -1.0"):
        TrainConfig.load(cfg("v", 1), word + ["optim.word_time_weight=-1.0"])
    with pytest.raises(TrainConfigError, match=r"optim.word_time_weight needs word grounding \(optim.grounding_weight > 0, "
                                               r"optim.grounding_mode = 'word'\)"):
        TrainConfig.load(cfg("v", 1), ["optim.word_time_weight=1.0"])
