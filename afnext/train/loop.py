"""The training loop: mixture -> samples (caps, loss masks) -> packed micro-batches -> loss -> AdamW.

Loss normalisation. A step's loss is the sum of next-token NLL over every labelled token of the
global batch divided by the global count of labelled tokens (all-reduced before the first backward).
Each micro-batch backpropagates its NLL sum / global count, scaled by the world size because FSDP
averages gradients over ranks. The result does not depend on how samples are split into micro-
batches or across ranks, so a 2-process run equals a 1-process run of the same global batch up to
floating-point summation order (tested).

Data-parallel sampling. Step s uses global sample positions [s*B, (s+1)*B) of the mixture's epoch
order; rank r takes the positions congruent to r mod world (MixtureSampler), so no sample is seen
twice and the set per step is independent of the world size. Ranks then pack their own samples
(best-fit into `token_budget`) and agree on the number of micro-batches, padding with empty ones.

Sequence parallelism (system.sp_ulysses x system.sp_ring > 1): ranks form SP groups of that size; an
SP group is one data-parallel replica whose ranks process the same micro-batches, each a shard of the
sequence (afnext.parallel.sequence). Label counts and statistics are counted once per replica.

Stage 0 ("scratch"): a nano model is built from [model] with random weights and the corpus tokenizer.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from afnext.checkpoint import default_generation_config
from afnext.config import AF3_MODEL_TYPE, AFNEXT_MODEL_TYPE, AFNextConfig, EncoderConfig, LLMConfig, RoTEConfig
from afnext.data.audio_cache import AudioCache
from afnext.data.loader import ManifestDataset, SkippingLoader
from afnext.data.mixture import MixtureSampler, Registry, build_mixture
from afnext.data.packing import best_fit_pack, collate_packed, packed_tokens
from afnext.data.tokenize import DropCounter, StageCaps, TrainSample, encode_sample
from afnext.model.afnext import IGNORE_INDEX, AFNext
from afnext.model.attention import use_backend
from afnext.processor import Processor
from afnext.tokenizer import TextTokenizer
from afnext.train import state as ckpt
from afnext.train.align import AlignProbe, align_sample, align_targets
from afnext.train.config import TrainConfig
from afnext.train.export import export_state, write_meta
from afnext.train.grounding import GroundingProbe, asked_events, ground_sample, probe_attention
from afnext.train.groups import apply_policies, build_optimizer, lr_factor, set_lr
from afnext.train.metrics import MetricsLogger
from afnext.train.prefix_sharing import BACKEND as PREFIX_BACKEND, shared_prefix_length
from afnext.train.reads import ReadGrounding, TimeReads
from afnext.train.time_head import TimeHead

PAD_MULTIPLE = 64  # packed micro-batches are trimmed to their content, rounded up to this many tokens


class TrainError(RuntimeError):
    """The run cannot start or continue (bad init checkpoint, data that yields no samples, ...)."""


# ---- set-up helpers --------------------------------------------------------------------------------
def apply_process_options(cfg: TrainConfig) -> None:
    """The process-wide torch settings a stage asks for (``[system]``), and its seed."""
    if cfg.system.threads:
        torch.set_num_threads(cfg.system.threads)
    torch.set_flush_denormal(cfg.system.flush_denormal)  # a no-op where the CPU lacks it
    torch.manual_seed(cfg.run.seed)


def init_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def resolve_init(init: str) -> Path:
    p = Path(init)
    for cand in (p / "final", p):
        if (cand / "config.json").is_file():
            return cand
    raise TrainError(f"run.init {init!r}: neither a checkpoint directory nor a run directory with final/")


def scratch_config(cfg: TrainConfig, tok: TextTokenizer) -> AFNextConfig:
    m = cfg.model
    ids = {t: tok.token_to_id(t) for t in ("<sound>", "<|sound_bos|>", "<|sound_eos|>")}
    if ids["<sound>"] is None:
        raise TrainError("the tokenizer has no <sound> token")
    llm = LLMConfig(vocab_size=tok.vocab_size, hidden_size=m.llm_hidden, intermediate_size=m.llm_ffn,
                    num_layers=m.llm_layers, num_heads=m.llm_heads, num_kv_heads=m.llm_kv_heads,
                    rope_theta=m.rope_theta, max_position_embeddings=131072,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    enc = EncoderConfig(hidden_size=m.encoder_hidden, num_layers=m.encoder_layers, num_heads=m.encoder_heads,
                        intermediate_size=m.encoder_ffn)
    return AFNextConfig(model_type=AFNEXT_MODEL_TYPE if m.rote else AF3_MODEL_TYPE, encoder=enc, llm=llm,
                        rote=RoTEConfig() if m.rote else None, audio_token_id=ids["<sound>"],
                        audio_bos_token_id=ids["<|sound_bos|>"] if m.rote else None,
                        audio_eos_token_id=ids["<|sound_eos|>"] if m.rote else None)


def init_weights(model: AFNext, std: float, *, uniform_attention: bool = False) -> None:
    """N(0, std) weights, unit norms, zero biases, Whisper's sinusoids; ``uniform_attention`` zeroes the
    LLM's query projections (see ``ModelConfig.init_uniform_attention``)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if uniform_attention and name.startswith("llm.") and ".self_attn.q_proj." in name:
                p.zero_()
            elif name.endswith("embed_positions.weight"):
                p.copy_(sinusoids(*p.shape))
            elif "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, std)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed sinusoidal position table."""
    inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


def tokenizer_dir(cfg: TrainConfig, init_dir: Path | None) -> Path:
    if cfg.data.processor:
        return Path(cfg.data.processor)
    if init_dir is None:
        raise TrainError("data.processor is required when run.init = 'scratch' (the corpus tokenizer directory)")
    return init_dir


# ---- the trainer -----------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, *, resume: bool = False, progress: bool = True):
        self.cfg = cfg
        self.rank, self.world, self.device = init_distributed()
        apply_process_options(cfg)
        self.run_dir = Path(cfg.run.out_dir)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._barrier()

        init_dir = None if cfg.run.init == "scratch" else resolve_init(cfg.run.init)
        self.tok_dir = tokenizer_dir(cfg, init_dir)
        if init_dir is None:
            tok = TextTokenizer.from_dir(self.tok_dir)
            model_cfg = scratch_config(cfg, tok)
            self.model = AFNext(model_cfg)
            init_weights(self.model, cfg.model.init_std, uniform_attention=cfg.model.init_uniform_attention)
            self.model.generation_defaults = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                                              "max_new_tokens": 2048}
        else:
            self.model = AFNext.from_pretrained(init_dir, dtype=torch.float32)
            # own the weights: a zero-copy mmap view of the init checkpoint must not be trained in place
            with torch.no_grad():
                for p in self.model.parameters():
                    p.data = p.data.clone()
        self.kind = "afnext" if self.model.config.rote is not None else "af3"
        if init_dir is not None and not cfg.data.processor:
            self.processor = Processor.from_pretrained(init_dir)  # the checkpoint's own template and files
        else:
            self.processor = Processor(TextTokenizer.from_dir(self.tok_dir), kind=self.kind)
        self.model.to(self.device)
        self.trainable = apply_policies(self.model, cfg.optim)
        if cfg.system.activation_checkpointing:
            self.model.encoder.gradient_checkpointing = True
            self.model.llm.gradient_checkpointing = True
        self.model.train()
        if self.world > 1:
            from afnext.parallel.fsdp import apply_fsdp, data_parallel_mesh

            apply_fsdp(self.model, data_parallel_mesh(self.device.type, self.world))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        if cfg.optim.grounding_weight and self.world > 1:
            raise TrainError("optim.grounding_weight is single-process only for now: its gradient path under FSDP is untested")
        self._ground_attn = self._grounding_attention(cfg.optim.grounding_layer) if cfg.optim.grounding_weight else None
        self._label_attn = None
        if self._ground_attn is not None and cfg.optim.grounding_label_layer >= 0:
            if cfg.optim.grounding_label_layer >= cfg.optim.grounding_layer:
                raise TrainError(f"optim.grounding_label_layer={cfg.optim.grounding_label_layer} must come before "
                                 f"optim.grounding_layer={cfg.optim.grounding_layer}")
            self._label_attn = self._grounding_attention(cfg.optim.grounding_label_layer)
        self._ground_acc = [0.0, 0]  # this step's grounding loss sum and grounded-sample count
        if cfg.optim.read_batch and self.world > 1:
            raise TrainError("optim.read_batch is single-process only for now: its second forward under FSDP is untested")
        self._reads = TimeReads(self.processor, self.model.config.audio_token_id, event_words=cfg.optim.read_event_words) \
            if cfg.optim.read_batch else None
        self._read_grounding = ReadGrounding(self._label_attn, self._ground_attn, cfg.optim.grounding_heads) \
            if cfg.optim.read_event_words else None
        self._read_acc = [0.0, 0, 0.0]  # this step's read loss sum, micro-batch count, read grounding sum
        if cfg.optim.time_head_weight and self.world > 1:
            raise TrainError("optim.time_head_weight is single-process only for now: its head is not sharded or all-reduced")
        self._time_head = self._aux_head() if cfg.optim.time_head_weight else None
        self._time_acc = [0.0, 0]  # this step's time-head loss sum and micro-batch count
        # grounding word mode is validated by the config; its label layer is where the word has looked
        self._word_time_head = self._aux_head() if cfg.optim.word_time_weight else None
        self._word_time_acc = [0.0, 0]  # this step's word-time loss sum and micro-batch count
        if cfg.optim.align_weight and self.world > 1:
            raise TrainError("optim.align_weight is single-process only for now: its gradient path under FSDP is untested")
        self._align_attn = self._attention_at(cfg.optim.align_layer, cfg.optim.align_heads, "align_layer", "align_heads") \
            if cfg.optim.align_weight else None
        self._align_acc = [0.0, 0]  # this step's alignment loss sum and aligned-word count
        # an answer's closing <|im_end|> (and an end-of-text) belong to no transcript word
        self._special_ids = {i for i in map(self.processor.tokenizer.token_to_id, ("<|im_end|>", "<|endoftext|>")) if i is not None}
        self._n_micro, self._micro_index = 1, 0

        # Sequence parallelism: each SP group (ulysses x ring ranks) shares one data-parallel slot and
        # processes the same micro-batches, each rank a shard of the sequence (afnext.parallel.sequence).
        self.sp = None
        self.sp_size = cfg.system.sp_ulysses * cfg.system.sp_ring
        self.dp_rank, self.dp_size = self.rank, self.world
        if self.sp_size > 1:
            if self.world % self.sp_size:
                raise TrainError(f"world size {self.world} is not divisible by sp_ulysses x sp_ring = {self.sp_size}")
            from afnext.parallel.groups import init_sp_groups

            self.sp = init_sp_groups(cfg.system.sp_ulysses, cfg.system.sp_ring)
            self.dp_rank, self.dp_size = self.sp.layout.dp_rank, self.world // self.sp_size
        d = cfg.data
        # Exact either way (afnext.train.prefix_sharing); the grounding probe and the SP shards work on
        # whole samples, so those runs pack without it.
        self._share_prefix = d.share_prefix and self._ground_attn is None and self.sp is None
        if d.global_batch % self.dp_size:
            raise TrainError(f"data.global_batch={d.global_batch} is not divisible by the {self.dp_size} data-parallel ranks")
        self.caps = StageCaps(max_audio_s=d.max_audio_s, max_tokens=d.max_tokens, policy=d.cap_policy)
        if not Path(d.registry).is_file():
            raise TrainError(f"data.registry {d.registry!r}: file not found")
        registry = Registry.load(d.registry)
        self.mixture = build_mixture(d.mixture, registry, seed=cfg.run.seed)
        if len(self.mixture) == 0:
            raise TrainError(f"mixture {d.mixture!r} has no readable rows")
        self.sampler = MixtureSampler(len(self.mixture), seed=cfg.run.seed, shuffle=True, rank=self.dp_rank,
                                      world_size=self.dp_size)
        cache = AudioCache(int(d.audio_cache_gb * 2**30)) if d.audio_cache_gb > 0 else None
        self.loader = SkippingLoader(ManifestDataset(self.mixture, audio_cache=cache), self.sampler)
        self.drops = DropCounter()
        self.step = 0
        self.samples_seen = 0
        self._family_nll: dict[str, list] = {}  # per-family NLL sums of the current step
        self.resumed_step: int | None = None  # the checkpoint step this run resumed from
        self.metrics = MetricsLogger(self.run_dir / "metrics.jsonl", enabled=self.rank == 0,
                                     total_steps=cfg.optim.max_steps, progress=progress, stage=cfg.run.stage)
        if resume:
            self._resume()
        elif self.rank == 0:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        if self.rank == 0:
            ckpt.clean_stale(self.run_dir)
            cfg.save(self.run_dir / "config.json")
        self._stream = iter(self.loader.stream())

    # ---- one step --------------------------------------------------------------------------------
    def _next_samples(self, n: int) -> list[TrainSample]:
        out = []
        for _ in range(n):
            item = next(self._stream)
            extra = item.get("extra") or {}
            result = encode_sample(self.processor, item["conversations"], item["waves"], self.caps,
                                   system=self.cfg.data.system_prompt or None, sample_id=item["id"],
                                   family=extra.get("family"))
            sample = self.drops.keep(result)
            if sample is not None:
                events = asked_events(extra) if self._ground_attn is not None else []
                if events:
                    sample.grounds = ground_sample(sample.input_ids, sample.labels, self.model.config.audio_token_id, events,
                                                   self.processor.tokenizer.encode if self._label_attn is not None else None)
                if self._align_attn is not None:
                    sample.aligns = align_sample(sample.input_ids, sample.labels, extra, self.model.config.audio_token_id,
                                                 self.processor.tokenizer.decode, self._special_ids)
                out.append(sample)
        return out

    def _aux_head(self) -> TimeHead:
        """A time-digit head on LLM-width features, at the run's largest group learning rate."""
        o = self.cfg.optim
        return TimeHead(self.model.config.llm.hidden_size, lr=max(float(v) for v in o.lr.values()),
                        betas=tuple(o.betas), weight_decay=o.weight_decay)

    def _grounding_attention(self, layer: int) -> torch.nn.Module:
        o = self.cfg.optim
        name = "grounding_layer" if layer == o.grounding_layer else "grounding_label_layer"
        return self._attention_at(layer, o.grounding_heads, name, "grounding_heads")

    def _attention_at(self, layer: int, heads: list[int], layer_key: str, heads_key: str) -> torch.nn.Module:
        """The attention module of LLM ``layer`` whose ``heads`` an auxiliary loss supervises (the keys
        name the config fields in errors)."""
        layers = self.model.llm.layers
        if not 0 <= layer < len(layers):
            raise TrainError(f"optim.{layer_key}={layer}: the LLM has layers 0..{len(layers) - 1}")
        attn = layers[layer].self_attn
        if not heads or any(not 0 <= h < attn.heads for h in heads):
            raise TrainError(f"optim.{heads_key}={heads}: the LLM has heads 0..{attn.heads - 1}")
        return attn

    def _probe_targets(self, batch: dict, flat: torch.Tensor, key: str) -> list:
        """(queries, lo, hi, start) per grounded answer of this packed row: the answer's positions attend to
        its ``key`` span ("onset": the event's first audio tokens, "word": the question's name for it)."""
        starts = batch["cu_seqlens"].tolist()
        targets = []
        for i, grounds in enumerate(batch.get("grounds") or []):
            s = starts[i]
            for g in grounds:
                span = getattr(g, key)
                # logit at p predicts p + 1: the answer's tokens [lo, hi) are predicted from [lo - 1, hi - 1)
                queries = flat[(flat >= s + g.answer[0] - 1) & (flat < s + g.answer[1] - 1)]
                if span is not None and queries.numel():
                    targets.append((queries, span[0] + s, span[1] + s, s))
        return targets

    def _answer_probes(self, batch: dict, flat: torch.Tensor) -> list:
        """Answer grounding: the answer looks at the onset (grounding layer) and at the event's name (label layer)."""
        probes = []
        for attn, key in ((self._ground_attn, "onset"), (self._label_attn, "word")):
            targets = self._probe_targets(batch, flat, key) if attn is not None else []
            if targets:
                probes.append((attn, GroundingProbe(self.cfg.optim.grounding_heads, targets)))
        return probes

    def _word_probes(self, batch: dict, flat: torch.Tensor) -> list:
        """Word grounding: each grounded answer's event word (its last token) looks at the onset tokens in
        the label layer, and the answer's positions look at that word in the grounding layer."""
        starts = batch["cu_seqlens"].tolist()
        to_onset = [(torch.tensor([g.word[1] - 1 + starts[i]], device=flat.device), g.onset[0] + starts[i],
                     g.onset[1] + starts[i], starts[i])
                    for i, grounds in enumerate(batch.get("grounds") or []) for g in grounds if g.word is not None]
        to_word = self._probe_targets(batch, flat, "word")
        if not to_onset or not to_word:
            return []
        heads = self.cfg.optim.grounding_heads
        return [(self._label_attn, GroundingProbe(heads, to_onset)), (self._ground_attn, GroundingProbe(heads, to_word))]

    def _word_time_targets(self, batch: dict, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(positions of the grounded event words' last tokens in the packed row, the index of their onset
        token within its audio), or None when the row has none."""
        starts = batch["cu_seqlens"].tolist()
        audio = (ids[0] == self.model.config.audio_token_id).nonzero().flatten().tolist()
        positions, index = [], []
        for i, grounds in enumerate(batch.get("grounds") or []):
            s = starts[i]
            first = next((p for p in audio if p >= s), None)  # a grounded sample has one audio run (grounding_span)
            for g in grounds:
                if g.word is not None and first is not None:
                    positions.append(s + g.word[1] - 1)
                    index.append(s + g.onset[0] - first)
        if not positions:
            return None
        return torch.tensor(positions, device=ids.device), torch.tensor(index)

    def _micro_batches(self, samples: list[TrainSample]) -> list[dict]:
        bins = best_fit_pack([len(s) for s in samples], self.cfg.data.token_budget) if samples else []
        batches = []
        for b in bins:
            group = [samples[i] for i in b]
            shared = shared_prefix_length(group, self.model.config.audio_token_id) if self._share_prefix else 0
            used = packed_tokens([len(s) for s in group], shared)
            width = min(self.cfg.data.token_budget, -(-used // PAD_MULTIPLE) * PAD_MULTIPLE)
            batch = collate_packed(group, width, self.processor.pad_token_id, shared_prefix=shared)
            batch["families"] = [s.family or "unknown" for s in group]
            batch["grounds"] = [s.grounds for s in group]
            batch["aligns"] = [s.aligns for s in group]
            batches.append(batch)
        return batches

    def _empty_batch(self) -> dict:
        pad = self.processor.pad_token_id
        ids = torch.full((1, PAD_MULTIPLE), pad, dtype=torch.long)
        return {"input_ids": ids, "labels": torch.full_like(ids, IGNORE_INDEX),
                "position_ids": torch.arange(PAD_MULTIPLE)[None], "cu_seqlens": torch.tensor([0, PAD_MULTIPLE], dtype=torch.int32)}

    def _autocast(self):
        a = self.cfg.system.autocast
        if a == "none":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if a == "bf16" else torch.float16)

    def _micro_step(self, batch: dict, denom: float) -> tuple[float, int]:
        if self.sp is not None:
            return self._micro_step_sp(batch, denom)
        ids = batch["input_ids"].to(self.device)
        labels = batch["labels"].to(self.device)
        target = labels[:, 1:].reshape(-1)
        # logits at position p predict token p + 1; compute them only where that token is labelled
        flat = torch.nonzero(target != IGNORE_INDEX).squeeze(1)
        row = ids.shape[1]
        logits_index = (flat // (row - 1)) * row + flat % (row - 1)
        seg = self._segments(batch, flat, row)  # the packed sample of each labelled logit
        probes = []  # (attention module, probe) of this packed row; the first one's loss is reported
        if self._ground_attn is not None and ids.shape[0] == 1:
            word = self.cfg.optim.grounding_mode == "word"
            probes = self._word_probes(batch, flat) if word else self._answer_probes(batch, flat)
        word_times = self._word_time_targets(batch, ids) if self._word_time_head is not None and probes else None
        word_hidden: list[torch.Tensor] = []
        align = None
        if self._align_attn is not None and ids.shape[0] == 1:
            targets = align_targets(batch.get("aligns") or [], batch["cu_seqlens"].tolist(), flat,
                                    int(batch.get("shared_prefix") or 0))
            align = AlignProbe(self.cfg.optim.align_heads, targets) if targets else None
        with self._autocast(), contextlib.ExitStack() as hooks:
            for attn, probe in probes:
                hooks.enter_context(probe_attention(attn, probe))
            if align is not None:
                hooks.enter_context(probe_attention(self._align_attn, align))
            if word_times is not None:
                layer = self.model.llm.layers[self.cfg.optim.grounding_label_layer]
                handle = layer.register_forward_hook(lambda m, a, o: word_hidden.append(o[0, word_times[0]]))
                hooks.callback(handle.remove)
            if batch.get("shared_prefix"):
                hooks.enter_context(use_backend(PREFIX_BACKEND))
            out = self.model(input_ids=ids, position_ids=batch["position_ids"].to(self.device),
                             cu_seqlens=batch["cu_seqlens"].to(self.device),
                             input_features=batch.get("input_features"),
                             input_features_mask=batch.get("input_features_mask"),
                             logits_index=logits_index)
            hooks.close()  # the probes and the prefix backend are for this forward only, not the reads' below
            token_nll = F.cross_entropy(out.logits.float(), target[flat], reduction="none")
            nll = token_nll.sum()
            if self.cfg.optim.loss_norm == "sample":  # denom counts samples: weigh each token by 1 / its sample's labels
                dev_seg = seg.to(token_nll.device)
                loss = (token_nll / torch.bincount(dev_seg)[dev_seg]).sum() / denom * self.world
            else:
                loss = nll / denom * self.world
            for i, (_, probe) in enumerate(probes):
                if probe.losses:
                    ground = torch.stack(probe.losses)
                    loss = loss + self.cfg.optim.grounding_weight * ground.sum() / denom * self.world
                    if i == 0:  # the onset look-up is what the metric reports
                        self._ground_acc[0] += float(ground.detach().sum())
                        self._ground_acc[1] += ground.numel()
            if align is not None and align.losses:
                aligned = torch.stack(align.losses)
                loss = loss + self.cfg.optim.align_weight * aligned.sum() / denom * self.world
                self._align_acc[0] += float(aligned.detach().sum())
                self._align_acc[1] += aligned.numel()
            if self._reads is not None and "input_features" in batch:
                gen = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + self.step * 1009 + self._micro_index)
                read = self._reads.loss(self.model, ids, out.audio_embeds, self.cfg.optim.read_batch, gen, self._read_grounding)
                if read is not None:
                    read, read_ground = read
                    loss = loss + self.cfg.optim.read_weight * (read + self.cfg.optim.grounding_weight * read_ground) / self._n_micro
                    self._read_acc[0] += float(read.detach())
                    self._read_acc[1] += 1
                    self._read_acc[2] += float(read_ground.detach())
            if self._time_head is not None and "input_features" in batch:
                timed = self._time_head.loss(ids, out.audio_embeds, self.model.config.audio_token_id)
                if timed is not None:
                    loss = loss + self.cfg.optim.time_head_weight * timed / self._n_micro
                    self._time_acc[0] += float(timed.detach())
                    self._time_acc[1] += 1
            if word_hidden:
                worded = self._word_time_head.loss_at(word_hidden[0], word_times[1])
                loss = loss + self.cfg.optim.word_time_weight * worded / self._n_micro
                self._word_time_acc[0] += float(worded.detach())
                self._word_time_acc[1] += 1
            if "input_features" not in batch:
                loss = loss + self._ghost_encoder()
        loss.backward()
        self._add_family_loss(batch, seg, token_nll.detach())
        return float(nll.detach()), int(flat.numel())

    def _add_family_loss(self, batch: dict, seg: torch.Tensor, token_nll: torch.Tensor) -> None:
        """Per-task-family NLL sums and label counts of this step (which skill is being learned)."""
        families = batch.get("families")
        if not families or token_nll.numel() == 0:
            return
        seg = seg.clamp(max=len(families) - 1)
        sums = torch.zeros(len(families), dtype=torch.float64).index_add_(0, seg, token_nll.cpu().double())
        counts = torch.bincount(seg, minlength=len(families))
        for fam, total, n in zip(families, sums.tolist(), counts.tolist()):
            acc = self._family_nll.setdefault(fam, [0.0, 0])
            acc[0] += total
            acc[1] += n

    @staticmethod
    def _segments(batch: dict, flat: torch.Tensor, row: int) -> torch.Tensor:
        """The packed sample (segment of `cu_seqlens`) each labelled logit belongs to."""
        pos = (flat % (row - 1)).cpu()  # the logit's position in the packed row
        seg = torch.searchsorted(batch["cu_seqlens"][1:-1].long(), pos, right=True)
        return seg - 1 if batch.get("shared_prefix") else seg  # a shared prefix is segment 0 and holds no labels

    def _family_losses(self) -> dict[str, float]:
        merged = self._family_nll
        if self.world > 1 and self.sp is None:
            parts: list = [None] * self.world
            dist.all_gather_object(parts, merged)
            merged = {}
            for part in parts:
                for fam, (total, n) in part.items():
                    acc = merged.setdefault(fam, [0.0, 0])
                    acc[0] += total
                    acc[1] += n
        return {fam: round(total / n, 4) for fam, (total, n) in sorted(merged.items()) if n}

    def _micro_step_sp(self, batch: dict, denom: float) -> tuple[float, int]:
        from afnext.parallel.sequence import sp_forward_loss

        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        with self._autocast():
            mean = sp_forward_loss(self.model, batch, self.sp)  # value: the micro-batch mean; grad: this shard's part
            # FSDP averages over all dp x sp ranks; the SP shards' partial gradients must add up instead.
            loss = mean * (n / denom) * self.world
            if "input_features" not in batch:
                loss = loss + self._ghost_encoder()
        loss.backward()
        return float(mean.detach()) * n / self.sp_size, n

    def _ghost_encoder(self) -> torch.Tensor:
        """0 x the encoder + adapter output on a silent window: every FSDP unit runs in every micro-batch."""
        feats = torch.zeros(1, self.model.config.encoder.num_mel_bins, self.model.encoder.window_frames, device=self.device)
        hidden = self.model.encoder(feats)
        return self.model.adapter(hidden).sum() * 0.0

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        per_rank = self.cfg.data.global_batch // self.dp_size
        samples = self._next_samples(per_rank)
        self.samples_seen += per_rank
        batches = self._micro_batches(samples)
        counts = torch.tensor([len(batches), sum(s.n_label_tokens for s in samples),
                               sum(1 for s in samples if s.n_label_tokens)], dtype=torch.float64)
        counts = self._all_reduce(counts, op="max_sum")
        n_micro, n_labels = int(counts[0]), float(counts[1]) / self.sp_size  # SP ranks hold the same samples
        denom = n_labels if self.cfg.optim.loss_norm == "token" else float(counts[2]) / self.sp_size
        batches += [self._empty_batch() for _ in range(n_micro - len(batches))]
        factor = lr_factor(self.step, self.cfg.optim.max_steps, self.cfg.optim.warmup_ratio,
                           self.cfg.optim.min_lr_ratio, self.cfg.optim.cycles)
        set_lr(self.optimizer, factor)
        nll_sum = 0.0
        self._family_nll: dict[str, list] = {}
        self._ground_acc = [0.0, 0]
        self._read_acc, self._n_micro = [0.0, 0, 0.0], n_micro
        self._time_acc = [0.0, 0]
        self._word_time_acc = [0.0, 0]
        self._align_acc = [0.0, 0]
        for self._micro_index, batch in enumerate(batches):
            nll, _ = self._micro_step(batch, max(denom, 1.0))
            nll_sum += nll
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad],
            self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._time_head is not None:
            self._time_head.step(factor)
        if self._word_time_head is not None:
            self._word_time_head.step(factor)
        self.step += 1
        stats = torch.tensor([nll_sum, sum(len(s) for s in samples), sum(s.total_audio_seconds for s in samples),
                              len(samples)], dtype=torch.float64)
        stats = self._all_reduce(stats)
        stats[1:] /= self.sp_size  # tokens, audio and samples of an SP group were counted by each of its ranks
        dt = time.perf_counter() - t0
        record = {
            "step": self.step,
            "loss": float(stats[0] / max(n_labels, 1.0)),
            "lr": {g["group"]: g["lr"] for g in self.optimizer.param_groups},
            "grad_norm": float(grad_norm),
            "samples": int(stats[3]),  # kept after stage caps, all ranks
            "tokens": int(stats[1]),
            "label_tokens": int(n_labels),
            "audio_s": float(stats[2]),
            "micro_batches": n_micro,
            "step_s": dt,
            "tokens_per_s": float(stats[1]) / dt,
            "audio_hours_per_s": float(stats[2]) / 3600 / dt,
            "family_loss": self._family_losses(),
            "dropped": self.drops.as_dict(),
            "skipped": self.loader.summary.skipped if hasattr(self.loader, "summary") else 0,
        }
        if self._ground_attn is not None:  # mean -log attention mass on the onset, over grounded samples
            g = self._all_reduce(torch.tensor(self._ground_acc, dtype=torch.float64))
            record["loss_ground"] = float(g[0] / g[1]) if g[1] else None
        if self._align_attn is not None:  # mean -log attention mass on each transcript word's audio, per word
            a = self._align_acc
            record["loss_align"] = a[0] / a[1] if a[1] else None
        if self._reads is not None:  # mean answer NLL of the time reads, per labelled token
            record["loss_read"] = self._read_acc[0] / self._read_acc[1] if self._read_acc[1] else None
            if self._read_grounding is not None:  # the reads' -log attention mass (both probes), per micro-batch
                record["loss_read_ground"] = self._read_acc[2] / self._read_acc[1] if self._read_acc[1] else None
        if self._time_head is not None:  # mean cross-entropy per time digit of the audio tokens
            record["loss_time"] = self._time_acc[0] / self._time_acc[1] if self._time_acc[1] else None
        if self._word_time_head is not None:  # mean cross-entropy per onset digit at the event words
            a = self._word_time_acc
            record["loss_word_time"] = a[0] / a[1] if a[1] else None
        return record

    # ---- the run ---------------------------------------------------------------------------------
    def fit(self, on_step=None) -> Path:
        """Train to ``optim.max_steps``, save and export. ``on_step(trainer, record)`` runs after each
        step's metrics are logged; it may change ``optim.max_steps`` (``set_max_steps``)."""
        cfg = self.cfg
        with self.metrics:
            while self.step < cfg.optim.max_steps:
                record = self.train_step()
                self.metrics.log(record)
                if on_step is not None:
                    on_step(self, record)
                if cfg.system.save_every and self.step % cfg.system.save_every == 0 and self.step < cfg.optim.max_steps:
                    self.save()
        # Fix: `--resume` of a finished run used to save step N again, which deletes the checkpoint directory
        # LATEST names before renaming the new one in (a kill -9 in between left no complete checkpoint).
        if self.step != self.resumed_step:
            self.save()
        return self.export()

    def set_max_steps(self, steps: int) -> None:
        """Re-plan the run's length mid-run (a wall-time budget, ``afnext.speedrun``): the warm-up and
        cosine follow the new total from the next step on; checkpoints and the export record it."""
        if steps < max(1, self.step):
            raise TrainError(f"max_steps={steps} is below the {self.step} steps already run")
        self.cfg.optim.max_steps = steps
        self.metrics.set_total(steps)
        if self.rank == 0:  # what the run directory says it was configured with stays true
            self.cfg.save(self.run_dir / "config.json")

    def save(self) -> Path:
        model_state, optim_state = self._full_state()
        trainer_state = {"step": self.step, "samples_seen": self.samples_seen, "config": self.cfg.to_dict(),
                         "drops": self.drops.as_dict(), "world_size": self.world}
        rank_state = {"rng": ckpt.rng_state(), "loader": self.loader.state_dict(), "drops": self.drops.as_dict()}
        if self._time_head is not None:
            rank_state["time_head"] = self._time_head.state_dict()
        if self._word_time_head is not None:
            rank_state["word_time_head"] = self._word_time_head.state_dict()
        return ckpt.save_checkpoint(self.run_dir, self.step, model_state=model_state, optim_state=optim_state,
                                    trainer_state=trainer_state, rank_state=rank_state,
                                    keep=self.cfg.system.keep_checkpoints, extra=self._write_export_meta)

    def _lora_layout(self) -> dict | None:
        o = self.cfg.optim
        return {"targets": list(o.lora_targets), "rank": o.lora_rank, "alpha": o.lora_alpha} \
            if o.freeze.get("llm") == "lora" else None

    def _write_export_meta(self, dst: Path) -> None:
        write_meta(dst, self.model.config, self._generation_defaults(), self.processor.tokenizer.backend,
                   kind=self.kind, lora=self._lora_layout())

    def _generation_defaults(self) -> dict:
        return dict(getattr(self.model, "generation_defaults", {}) or {}) or default_generation_config(self.model.config)

    def _full_state(self) -> tuple[dict | None, dict | None]:
        if self.world > 1:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                                 get_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_state = get_model_state_dict(self.model, options=opts)
            optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        else:
            model_state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            optim_state = self.optimizer.state_dict()
        if self.rank != 0:
            return None, None
        return model_state, optim_state

    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            raise TrainError(f"--resume: {self.run_dir} has no complete checkpoint")
        model_state, optim_state, trainer_state, rank_state = ckpt.load_checkpoint(path)
        if self.world > 1:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, model_state, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, optim_state, options=opts)
        else:
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optim_state)
        self.step = self.resumed_step = trainer_state["step"]
        self.samples_seen = trainer_state["samples_seen"]
        self.loader.load_state_dict(rank_state["loader"])
        if self._time_head is not None:
            if "time_head" not in rank_state:
                raise TrainError(f"--resume: {path} was saved without optim.time_head_weight; its head cannot be restored")
            self._time_head.load_state_dict(rank_state["time_head"])
        if self._word_time_head is not None:
            if "word_time_head" not in rank_state:
                raise TrainError(f"--resume: {path} was saved without optim.word_time_weight; its head cannot be restored")
            self._word_time_head.load_state_dict(rank_state["word_time_head"])
        self.drops = DropCounter()
        for reason, n in rank_state.get("drops", {}).items():
            self.drops.counts[reason] = n
        ckpt.set_rng_state(rank_state["rng"])
        self.metrics.truncate_after(self.step)

    def export(self) -> Path:
        """The final model as an HF-format checkpoint (LoRA merged), with the tokenizer and template."""
        model_state, _ = self._full_state()
        out = self.run_dir / "final"
        if self.rank == 0:
            export_state(model_state, self.model.config, self._generation_defaults(), self.processor.tokenizer.backend,
                         out, kind=self.kind, lora=self._lora_layout(), info={"stage": self.cfg.run.stage, "step": self.step})
        self._barrier()
        return out

    # ---- collectives -----------------------------------------------------------------------------
    def _all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world == 1:
            return t
        if op == "max_sum":  # element 0: max, the rest: sum
            first = t[:1].clone()
            rest = t[1:].clone()
            dist.all_reduce(first, op=dist.ReduceOp.MAX)
            dist.all_reduce(rest)
            return torch.cat([first, rest])
        out = t.clone()
        dist.all_reduce(out)
        return out

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()
