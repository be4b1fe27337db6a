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
