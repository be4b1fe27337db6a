"""Transcript alignment (afnext.train.align): word windows from the speech segment, the words of a
tokenized answer, the probe's value against the grounding probe's, and the wiring into the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch

import train_helpers as th


def test_word_windows_split_the_speech_by_spoken_length():
    from afnext.train.align import spoken_length, word_windows

    assert [spoken_length(w) for w in ("7", "0", "go", "17")] == [5, 4, 2, 2]  # a lone digit is said as its name
    # weights (letters + a pause of 2): "0" -> 4 + 2, "seven" -> 5 + 2, over [1.0, 2.3) s
    (a, b), (c, d) = word_windows(["0", "seven"], 1.0, 2.3)
    assert (a, b, c, d) == pytest.approx((1.0, 1.6, 1.6, 2.3))


A, EOS, X = 7, 99, -100
PIECES = {10: "go", 11: " sto", 12: "p", EOS: ""}


def _decode(ids):
    return "".join(PIECES[int(i)] for i in ids)


def _asr_sample(answer=(10, 11, 12)):
    """[1] + 50 audio tokens (2 s) + [2] + the answer and <|im_end|>, labelled."""
    ids = torch.tensor([1] + [A] * 50 + [2] + list(answer) + [EOS])
    labels = torch.full_like(ids, X)
    labels[52:] = ids[52:]
    return ids, labels


def _extra(transcript="go stop", segments=({"start_s": 0.21, "end_s": 1.41},), task="asr"):
    return {"task": task, "labels": {"transcript": transcript, "segments": list(segments)}}


def test_align_sample_pairs_each_word_with_where_it_is_spoken():
    from afnext.train.align import WordAlign, align_sample

    ids, labels = _asr_sample()
    # "go" (2 letters + 2) and "stop" (4 + 2) share [0.21, 1.41) s: 0.21-0.69 and 0.69-1.41 s; each window
    # widened by 0.08 s is, in 40-ms tokens, 3..20 and 15..38; the audio starts at position 1.
    got = align_sample(ids, labels, _extra(), A, _decode, {EOS})
    assert got == [WordAlign(52, 53, 4, 21), WordAlign(53, 55, 16, 39)]  # "stop" is two tokens; <|im_end|> is none
    # nothing to align: another task, no single speech segment, an answer that is not the transcript,
    # two audio runs
    assert align_sample(ids, labels, _extra(task="event_onset"), A, _decode, {EOS}) == []
    assert align_sample(ids, labels, _extra(segments=()), A, _decode, {EOS}) == []
    two = ({"start_s": 0.2, "end_s": 0.6}, {"start_s": 0.8, "end_s": 1.2})
    assert align_sample(ids, labels, _extra(segments=two), A, _decode, {EOS}) == []
    short_ids, short_labels = _asr_sample(answer=(10,))
    assert align_sample(short_ids, short_labels, _extra(), A, _decode, {EOS}) == []
    split = ids.clone()
    split[25] = 3
    assert align_sample(split, labels, _extra(), A, _decode, {EOS}) == []
    # a window past the audio's end is clipped to it
    late = align_sample(ids, labels, _extra(segments=({"start_s": 1.0, "end_s": 2.5},)), A, _decode, {EOS})
    assert late[-1].audio_hi == 51


def test_align_probe_equals_the_grounding_probe_word_by_word(tiny_dirs):
    """Each word's loss is the grounding probe's -log mass for that word's queries and window (that probe
    is checked against the attention module's own forward in test_grounding), with keys shared per sample."""
    from afnext.model.afnext import AFNext
    from afnext.model.attention import AttentionMask
    from afnext.train.align import AlignProbe, WordAlign, align_targets
    from afnext.train.grounding import GroundingProbe

    torch.manual_seed(0)
    model = AFNext.from_pretrained(tiny_dirs["afnext"], dtype=torch.float32).eval()
    llm = model.llm
    attn = llm.layers[-1].self_attn
    cu = torch.tensor([0, 25, 40], dtype=torch.int32)
    position_ids = torch.cat([torch.arange(25), torch.arange(15)])[None]
    x = torch.randn(1, 40, llm.norm.weight.numel())
    cos, sin = llm.rotary(position_ids, torch.float32)
    mask = AttentionMask(causal=True, cu_seqlens=cu)
    aligns = [[WordAlign(18, 20, 2, 6), WordAlign(20, 23, 5, 11)], [WordAlign(11, 14, 1, 4)]]
    flat = torch.tensor([17, 18, 19, 20, 21, 22, 35, 36, 37])  # labelled logits; 21 is not (a cut word's)
    flat = flat[flat != 21]
    targets = align_targets(aligns, cu.tolist(), flat)
    heads = [0, attn.heads - 1]
    probe = AlignProbe(heads, targets)
    with torch.no_grad():
        probe(attn, (x, cos, sin, mask, None), None)
    expected = [(torch.tensor([17, 18]), 2, 6, 0), (torch.tensor([19, 20]), 5, 11, 0),
                (torch.tensor([35, 36, 37]), 26, 29, 25)]
    reference = GroundingProbe(heads, expected)
    with torch.no_grad():
        reference(attn, (x, cos, sin, mask, None), None)
    assert len(probe.losses) == 3
    for got, want in zip(probe.losses, reference.losses):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # a word whose tokens have no labelled logit (cut by a cap) is left out, not scored as zero
    assert len(align_targets([[WordAlign(30, 31, 1, 4)]], [0], flat)) == 0


def _asr_corpus(root):
    """The trainer-test corpus with its audio rows turned into transcription items: the answer is the
    transcript, spoken over [0.3, 1.5) s."""
    registry = th.make_corpus(root)
    manifest = root / "train.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        if "sound" in r:
            r.update(task="asr", labels={"transcript": "one two three",
                                         "segments": [{"start_s": 0.3, "end_s": 1.5}]})
            r["conversations"][1]["value"] = "one two three"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return registry


def test_trainer_aligns_transcripts_and_reports_the_loss(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    registry = _asr_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "a.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=2)
    trainer = Trainer(TrainConfig.load(cfg, ["optim.align_weight=1.0", "optim.align_layer=1", "optim.align_heads=[0, 1]",
                                             'optim.loss_norm="sample"']), progress=False)
    assert trainer._share_prefix  # the probe sees the shared system turn as the attention does
    samples = trainer._next_samples(8)
    audio_id = trainer.model.config.audio_token_id
    aligned = [s for s in samples if s.aligns]
    assert aligned and all(not s.aligns for s in samples if not (s.input_ids == audio_id).any())
    decode = trainer.processor.tokenizer.decode
    for s in aligned:
        first = int((s.input_ids == audio_id).nonzero()[0])
        assert [decode(s.input_ids[w.lo:w.hi].tolist()).strip() for w in s.aligns] == ["one", "two", "three"]
        # letters + pauses 5, 5, 7 of [0.3, 1.5) s: 0.3-0.65, 0.65-1.0, 1.0-1.5 s, widened by 0.08 s
        assert [(w.audio_lo - first, w.audio_hi - first) for w in s.aligns] == [(5, 19), (14, 28), (23, 40)]

    # The loss reaches the supervised layer's query projection (keys get none yet: the scratch init has
    # zero queries, see init_uniform_attention), never the values, a later layer or the LM head.
    batch = trainer._micro_batches(aligned)[0]
    assert batch["aligns"] and all(len(a) == 3 for a in batch["aligns"])  # one list per packed sample
    diff = th.grad_change(trainer, batch, "align_weight", 0.0)
    assert diff["llm.layers.1.self_attn.q_proj.weight"] > 1e-6
    assert diff["llm.layers.1.self_attn.v_proj.weight"] == 0.0  # the mass does not depend on values
    assert diff["lm_head.weight"] == 0.0

    # The same words and the same loss whether the row holds the system turn once or per sample.
    def align_loss(shared):
        trainer._share_prefix = shared
        (b,) = trainer._micro_batches(aligned[:3])
        assert bool(b.get("shared_prefix")) == shared
        trainer._align_acc = [0.0, 0]
        trainer._micro_step(b, 1.0)
        trainer.model.zero_grad(set_to_none=True)
        return trainer._align_acc

    (with_shared, n1), (without, n2) = align_loss(True), align_loss(False)
    assert n1 == n2 == 9 and with_shared == pytest.approx(without, rel=1e-5)

    record = trainer.train_step()
    # at step 0 attention is uniform over the visible keys: -log mass ~ log(keys / window) per word
    assert record["loss_align"] is not None and 0 < record["loss_align"] < math.log(2000)
    assert math.isfinite(record["loss"])
    off = Trainer(TrainConfig.load(cfg, [f'run.out_dir="{tmp_path / "off"}"']), progress=False)
    assert "loss_align" not in off.train_step() and off._share_prefix


def test_align_options_are_validated(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig, TrainConfigError
    from afnext.train.loop import Trainer, TrainError

    registry = _asr_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "a.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=1)
    with pytest.raises(TrainConfigError, match="optim.align_weight must be a finite number >= 0, got -1.0"):
        TrainConfig.load(cfg, ["optim.align_weight=-1.0"])
    with pytest.raises(TrainConfigError, match="optim.align_weight is not supported with sequence parallelism"):
        TrainConfig.load(cfg, ["optim.align_weight=1.0", "system.sp_ring=2"])
    with pytest.raises(TrainConfigError, match="optim.align_weight is not supported with system.activation_checkpointing"):
        TrainConfig.load(cfg, ["optim.align_weight=1.0", "system.activation_checkpointing=true"])
    with pytest.raises(TrainError, match=r"optim.align_layer=2: the LLM has layers 0..1"):
        Trainer(TrainConfig.load(cfg, ["optim.align_weight=1.0", "optim.align_layer=2"]), progress=False)
    with pytest.raises(TrainError, match=r"optim.align_heads=\[0, 9\]: the LLM has heads 0..\d"):
        Trainer(TrainConfig.load(cfg, ["optim.align_weight=1.0", "optim.align_heads=[0, 9]"]), progress=False)
