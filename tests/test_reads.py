"""Time reads (afnext.train.reads): token times from placeholder runs, read samples that ask one
audio token its time, and their wiring into the trainer (loss reported, gradient where it should be)."""

from __future__ import annotations

import math

import pytest
import torch

import train_helpers as th
from afnext.eval.synthetic import predicted_onset
from afnext.model.afnext import IGNORE_INDEX


def test_token_times_restart_at_each_audio():
    from afnext.train.reads import token_times

    a = 7
    ids = torch.tensor([[1, a, a, a, 2, 3, a, a, 4], [a, 5, 5, 5, 5, 5, 5, 5, a]])
    assert token_times(ids, a).tolist() == pytest.approx([0.0, 0.04, 0.08, 0.0, 0.04, 0.0, 0.0])
    assert token_times(torch.tensor([1, 2, 3]), a).numel() == 0


def test_a_read_sample_asks_one_token_its_time(tiny_dirs):
    from afnext.processor import Processor
    from afnext.train.reads import QUESTION, TimeReads

    proc = Processor.from_pretrained(tiny_dirs["afnext"])
    reads = TimeReads(proc, proc.audio_token_id)
    ids, labels = reads.batch([0.0, 23.44, 59.96])
    assert ids.shape == labels.shape and ids.shape[0] == 3
    for row, t in zip(range(3), (0.0, 23.4, 60.0)):
        assert int((ids[row] == proc.audio_token_id).sum()) == 1
        answer = labels[row][labels[row] != IGNORE_INDEX]
        assert predicted_onset(proc.decode(answer[: len(proc.tokenizer.encode(f'{t:.1f}s'))].tolist())) == pytest.approx(t)
    assert QUESTION in proc.decode(ids[0].tolist())


def test_trainer_adds_reads_and_reports_their_loss(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    registry = th.make_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "r.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=2)
    trainer = Trainer(TrainConfig.load(cfg, ["optim.read_batch=6"]), progress=False)
    audio_id = trainer.model.config.audio_token_id
    samples = [s for s in trainer._next_samples(8) if (s.input_ids == audio_id).any()]
    assert samples
    batch = trainer._micro_batches(samples)[0]
    # the reads reach the LM head and the adapter (through the picked audio embeddings)
    diff = th.grad_change(trainer, batch, "read_weight", 0.0)
    assert diff["lm_head.weight"] > 1e-7
    assert max(v for n, v in diff.items() if n.startswith("adapter.")) > 1e-7
    record = trainer.train_step()
    # a random LLM reads a time about as well as a uniform guess over its vocabulary
    assert record["loss_read"] is not None and 0.5 * math.log(trainer.model.config.llm.vocab_size) < record["loss_read"] < 50
    plain = Trainer(TrainConfig.load(cfg, [f"run.out_dir=\"{tmp_path / 'plain'}\""]), progress=False).train_step()
    assert "loss_read" not in plain


def test_read_options_are_validated(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig, TrainConfigError

    registry = th.make_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "r.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=1)
    with pytest.raises(TrainConfigError, match="optim.read_batch must be >= 0, got -2"):
        TrainConfig.load(cfg, ["optim.read_batch=-2"])
    with pytest.raises(TrainConfigError, match="optim.read_weight must be a finite number >= 0, got -1.0"):
        TrainConfig.load(cfg, ["optim.read_weight=-1.0"])
    with pytest.raises(TrainConfigError, match="optim.read_batch is not supported with sequence parallelism"):
        TrainConfig.load(cfg, ["optim.read_batch=4", "system.sp_ulysses=2"])
    with pytest.raises(TrainConfigError, match=r"optim.read_event_words needs optim.read_batch > 0 and word grounding "
                                               r"\(optim.grounding_weight > 0, optim.grounding_mode = 'word'\)"):
        TrainConfig.load(cfg, ["optim.read_batch=4", "optim.read_event_words=true"])


def test_event_word_reads_name_an_event_and_point_the_probes_at_its_word_and_audio(tiny_dirs):
    from afnext.data.families.sound import NOUN, ONSET_QUESTIONS
    from afnext.processor import Processor
    from afnext.train.reads import ReadGrounding, TimeReads

    proc = Processor.from_pretrained(tiny_dirs["afnext"])
    reads = TimeReads(proc, proc.audio_token_id, event_words=True)
    nouns = sorted(set(NOUN.values()))
    assert len(reads.prompts) == len(ONSET_QUESTIONS) * len(nouns)
    picks = [0, 5, len(reads.prompts) - 1]
    ids, labels = reads.batch([1.0, 12.3, 47.9], picks)
    label_attn, ground_attn = torch.nn.Identity(), torch.nn.Identity()
    (a1, to_audio), (a2, to_word) = reads.probes(labels, picks, ReadGrounding(label_attn, ground_attn, [0, 1]))
    assert a1 is label_attn and a2 is ground_attn and to_audio.heads == [0, 1]
    for row, k in enumerate(picks):
        text = proc.decode(ids[row].tolist())
        noun = nouns[k % len(nouns)]
        assert ONSET_QUESTIONS[k // len(nouns)].format(x=noun) in text
        queries, lo, hi, start, r = to_audio.targets[row]
        assert r == row and start == 0 and hi == lo + 1 and int(ids[row, lo]) == proc.audio_token_id
        assert proc.decode(ids[row, queries].tolist()).strip() == proc.decode(proc.tokenizer.encode(" " + noun)[-1:]).strip()
        queries, lo, hi, start, r = to_word.targets[row]
        assert proc.decode(ids[row, lo:hi].tolist()) == " " + noun
        # the supervised positions are the ones whose logits predict the answer's labelled tokens
        assert (labels[row, queries + 1] != IGNORE_INDEX).all()
        assert int((labels[row] != IGNORE_INDEX).sum()) == queries.numel()


def test_trainer_grounds_event_word_reads_and_reports_their_probe_loss(tmp_path, tiny_dirs):
    from afnext.train.config import TrainConfig
    from afnext.train.loop import Trainer

    registry = th.make_corpus(tmp_path / "data")
    cfg = th.write_config(tmp_path / "r.toml", registry=registry, processor=tiny_dirs["afnext"],
                          out_dir=tmp_path / "run", max_steps=2)
    sets = ["optim.read_batch=6", "optim.grounding_weight=0.5", "optim.grounding_mode=\"word\"",
            "optim.grounding_label_layer=0", "optim.grounding_layer=1", "optim.grounding_heads=[0, 1]"]
    trainer = Trainer(TrainConfig.load(cfg, sets + ["optim.read_event_words=true"]), progress=False)
    audio_id = trainer.model.config.audio_token_id
    samples = [s for s in trainer._next_samples(8) if (s.input_ids == audio_id).any()]
    batch = trainer._micro_batches(samples)[0]
    # the reads' probes reach layer 0's queries (the event word looking at the audio token); the corpus
    # has no onset items, so without event-word reads nothing supervises that attention
    diff = th.grad_change(trainer, batch, "grounding_weight", 0.0)
    assert diff["llm.layers.0.self_attn.q_proj.weight"] > 1e-7
    record = trainer.train_step()
    assert record["loss_read"] is not None and record["loss_read_ground"] > 0
    plain = Trainer(TrainConfig.load(cfg, sets + [f"run.out_dir=\"{tmp_path / 'plain'}\""]), progress=False).train_step()
    assert "loss_read_ground" not in plain and plain["loss_read"] is not None
