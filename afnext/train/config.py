"""Stage configuration: one reviewable TOML file per curriculum stage, overridable from the command line.

Every field has a default, so a stage file only says what makes that stage different. `--set
optim.max_steps=20` style overrides are parsed as TOML values (numbers, booleans, lists, inline
tables), falling back to plain strings, and unknown keys are errors: a typo must not silently train
the wrong thing. The resolved configuration is written into the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUPS = ("encoder", "adapter", "llm")
POLICIES = ("train", "frozen", "lora")


class TrainConfigError(ValueError):
    """A stage configuration is malformed or inconsistent."""


@dataclass
class RunConfig:
    stage: str = "custom"
    out_dir: str = "runs/custom"
    # An HF-format checkpoint directory, a previous stage's run directory (its final export is used),
    # or "scratch" (build from [model] with random weights: stage 0 of a nano run).
    init: str = "scratch"
    seed: int = 0
    # "lm": next-token loss on the answers (every curriculum stage); "encoder": the encoder alone with
    # tagging / CTC heads on the corpus labels (nano stage 0a, afnext.train.encoder_pretrain)
    objective: str = "lm"


@dataclass
class ModelConfig:
    """Shape used only when run.init == "scratch"; otherwise the checkpoint's config rules."""

    encoder_hidden: int = 128
    encoder_layers: int = 4
    encoder_heads: int = 4
    encoder_ffn: int = 512
    llm_hidden: int = 256
    llm_layers: int = 4
    llm_heads: int = 4
    llm_kv_heads: int = 2
    llm_ffn: int = 768
    rope_theta: float = 15.3e6
    rote: bool = True  # False trains the AF3 layout (no rotary time embedding): the ablation switch
    init_std: float = 0.02
    # Zero the LLM's query projections at initialisation: every layer then starts with uniform causal
    # attention, so the audio tokens reach the answer from step 1 and their path learns before the text
    # priors take the attention away (measured on the nano corpus: speaker gender learned in ~110 steps
    # instead of staying at chance). The keys keep their random init, so the queries still get gradient.
    init_uniform_attention: bool = True


@dataclass
class DataConfig:
    registry: str = ""
    mixture: str = "train"
    processor: str = ""  # tokenizer/processor directory; default: the init checkpoint
    max_audio_s: float = 30.0
    max_tokens: int = 8192
    cap_policy: str = "drop"  # drop | truncate
    token_budget: int = 8192  # tokens per packed micro-batch
    global_batch: int = 16  # samples per optimizer step, summed over data-parallel ranks
    system_prompt: str = ""  # empty: the chat template's default
    # Hold the packed samples' common leading tokens (the system turn) once per row: the same step,
    # computed on fewer tokens (afnext.train.prefix_sharing).
    share_prefix: bool = True
    audio_cache_gb: float = 2.0  # decoded waves kept in memory across epochs, per process (GiB); 0: off


@dataclass
class OptimConfig:
    freeze: dict[str, str] = field(default_factory=lambda: {"encoder": "train", "adapter": "train", "llm": "train"})
    lr: dict[str, float] = field(default_factory=lambda: {"encoder": 1e-4, "adapter": 1e-4, "llm": 1e-4})
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    # >1: the warm-up + cosine restarts this many times over max_steps (equal cycles; the optimizer's
    # moments and the data order carry on), as if each cycle were a run continuing the previous one's export.
    cycles: int = 1
    grad_clip: float = 1.0
    # "token": the batch's mean NLL over all labelled tokens (AF3's normalisation). "sample": each sample's
    # mean NLL, averaged over the batch's samples, so a one-word multiple-choice answer weighs as much as a
    # 15-token transcript (in a mixed nano batch token-normalisation gives the 1-2-token answers ~15 % of
    # the gradient for ~45 % of the samples).
    loss_norm: str = "token"
    max_steps: int = 100
    # Grounding loss (afnext.train.grounding): weight of -log attention mass of the chosen LLM heads on
    # the labelled onset tokens of event_onset items, normalised like the answer loss; 0 turns it off.
    grounding_weight: float = 0.0
    grounding_layer: int = 1  # LLM layer whose attention is supervised
    grounding_heads: list[int] = field(default_factory=lambda: [0])  # query heads of that layer (and of grounding_label_layer)
    grounding_label_layer: int = -1  # an earlier layer taught to look at the question's event name; -1: off
    # "answer": the answer looks at the onset (grounding_layer) and at the event name (grounding_label_layer).
    # "word": the event name's last token looks at the onset (grounding_label_layer, where the word's own
    # embedding is the query) and the answer looks at that word (grounding_layer); see afnext.train.grounding.
    grounding_mode: str = "answer"
    # Time reads (afnext.train.reads): audio tokens per micro-batch asked their own start time, each
    # alone; their mean answer NLL is added to each step's loss times read_weight. 0 turns them off.
    read_batch: int = 0
    read_weight: float = 1.0
    # Reads ask the onset questions about a named event and carry the word-grounding probes (word -> the
    # read's audio token -> answer), the circuit the onset answers use; needs grounding_mode "word".
    read_event_words: bool = False
    # Time-digit head (afnext.train.time_head): weight of a linear head's cross-entropy on every audio
    # token's time digits, read from the adapter output; keeps the tokens' time linearly readable. 0: off.
    time_head_weight: float = 0.0
    # Word time head: the same kind of head on the hidden state after grounding_label_layer at the asked
    # event's word (its last token), trained on the event's onset digits: supervises what the word's
    # look-up carries, not only where it looks. Needs grounding_mode "word". 0: off.
    word_time_weight: float = 0.0
    # Transcript alignment (afnext.train.align): weight of -log attention mass of align_heads in
    # align_layer, at each transcript word's predicting positions, on the audio where the word is
    # spoken (estimated from the clip's speech segment); normalised like the answer loss. 0: off.
    align_weight: float = 0.0
    align_layer: int = 1
    align_heads: list[int] = field(default_factory=lambda: [0, 1, 2])
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class SystemConfig:
    autocast: str = "none"  # none | bf16 | fp16 (fp16 only on GPU)
    activation_checkpointing: bool = False
    save_every: int = 0  # steps; 0 = only the final checkpoint
    keep_checkpoints: int = 2
    log_every: int = 1
    sp_ulysses: int = 1
    sp_ring: int = 1
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # Flush subnormal floats to zero on the CPU: as weights train, subnormal intermediates appear and
    # each costs the FPU a slow path (measured: a nano stage 0b step from trained weights 0.40 -> 0.35 s).
    flush_denormal: bool = True


@dataclass
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        cfg = cls()
        for section, values in d.items():
            if section not in _SECTIONS:
                raise TrainConfigError(f"{source}: unknown section [{section}]; sections are {', '.join(_SECTIONS)}")
            if not isinstance(values, dict):
                raise TrainConfigError(f"{source}: [{section}] must be a table")
            target = getattr(cfg, section)
            for key, value in values.items():
                _assign(target, section, key, value, source)
        cfg.validate(source)
        return cfg

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] = ()) -> "TrainConfig":
        p = Path(path)
        try:
            d = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainConfigError(f"{p}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise TrainConfigError(f"{p}: invalid TOML ({exc})") from None
        for item in overrides:
            apply_override(d, item)
        return cls.from_dict(d, source=str(p))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    def _check_probe_weight(self, source: str, key: str) -> None:
        """An aid whose probe re-reads one attention module's inputs (grounding, alignment): a finite weight
        >= 0, and, when on, the whole sequence in one process and the module's forward run once."""
        w = getattr(self.optim, key)
        if not (math.isfinite(w) and w >= 0):
            raise TrainConfigError(f"{source}: optim.{key} must be a finite number >= 0, got {w!r}")
        if w and self.system.sp_ulysses * self.system.sp_ring > 1:
            raise TrainConfigError(f"{source}: optim.{key} is not supported with sequence parallelism "
                                   f"(sp_ulysses x sp_ring > 1)")
        if w and self.system.activation_checkpointing:
            raise TrainConfigError(f"{source}: optim.{key} is not supported with system.activation_checkpointing")

    def validate(self, source: str = "config") -> None:
        o = self.optim
        for name in GROUPS:
            if o.freeze.get(name, "train") not in POLICIES:
                raise TrainConfigError(f"{source}: optim.freeze.{name} = {o.freeze[name]!r}; use one of {', '.join(POLICIES)}")
        for name in set(o.freeze) | set(o.lr):
            if name not in GROUPS:
                raise TrainConfigError(f"{source}: unknown module group {name!r}; groups are {', '.join(GROUPS)}")
        # Fix: a non-number lr used to fail later, in the optimizer, naming no key; a negative one trained uphill;
        # betas of the wrong length crashed AdamW with a traceback.
        for name, lr in o.lr.items():
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
                raise TrainConfigError(f"{source}: optim.lr.{name} must be a non-negative number, got {lr!r}")
        if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                        for b in o.betas):
            raise TrainConfigError(f"{source}: optim.betas must be two numbers in [0, 1), got {o.betas!r}")
        if o.freeze.get("encoder") == "lora" or o.freeze.get("adapter") == "lora":
            raise TrainConfigError(f"{source}: LoRA is supported on the llm group only")
        if all(o.freeze.get(g, "train") == "frozen" for g in GROUPS):
            raise TrainConfigError(f"{source}: every module group is frozen; nothing would train")
        if o.max_steps < 1:
            raise TrainConfigError(f"{source}: optim.max_steps must be >= 1")
        if not 0 <= o.warmup_ratio < 1:
            raise TrainConfigError(f"{source}: optim.warmup_ratio must be in [0, 1)")
        if not 1 <= o.cycles <= o.max_steps:
            raise TrainConfigError(f"{source}: optim.cycles must be between 1 and optim.max_steps ({o.max_steps})")
        if self.data.cap_policy not in ("drop", "truncate"):
            raise TrainConfigError(f"{source}: data.cap_policy must be 'drop' or 'truncate'")
        if self.data.max_tokens > self.data.token_budget:
            raise TrainConfigError(f"{source}: data.max_tokens ({self.data.max_tokens}) exceeds data.token_budget "
                                   f"({self.data.token_budget}); a capped sample must fit one micro-batch")
        c = self.data.audio_cache_gb
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (math.isfinite(c) and c >= 0):
            raise TrainConfigError(f"{source}: data.audio_cache_gb must be a finite number >= 0 (GiB), got {c!r}")
        if self.data.global_batch < 1:
            raise TrainConfigError(f"{source}: data.global_batch must be >= 1")
        if self.system.autocast not in ("none", "bf16", "fp16"):
            raise TrainConfigError(f"{source}: system.autocast must be none, bf16 or fp16")
        if self.optim.loss_norm not in ("token", "sample"):
            raise TrainConfigError(f"{source}: optim.loss_norm must be 'token' or 'sample', got {self.optim.loss_norm!r}")
        if self.optim.loss_norm == "sample" and self.system.sp_ulysses * self.system.sp_ring > 1:
            raise TrainConfigError(f"{source}: optim.loss_norm = 'sample' is not supported with sequence parallelism "
                                   f"(sp_ulysses x sp_ring > 1); use 'token'")
        self._check_probe_weight(source, "grounding_weight")
        if o.grounding_mode not in ("answer", "word"):
            raise TrainConfigError(f"{source}: optim.grounding_mode must be 'answer' or 'word', got {o.grounding_mode!r}")
        if o.grounding_weight and o.grounding_mode == "word" and o.grounding_label_layer < 0:
            raise TrainConfigError(f"{source}: optim.grounding_mode = 'word' needs optim.grounding_label_layer >= 0 "
                                   f"(the layer where the event word looks at the onset)")
        if not (math.isfinite(o.time_head_weight) and o.time_head_weight >= 0):
            raise TrainConfigError(f"{source}: optim.time_head_weight must be a finite number >= 0, got {o.time_head_weight!r}")
        if not (math.isfinite(o.word_time_weight) and o.word_time_weight >= 0):
            raise TrainConfigError(f"{source}: optim.word_time_weight must be a finite number >= 0, got {o.word_time_weight!r}")
        if o.word_time_weight and not (o.grounding_weight and o.grounding_mode == "word"):
            raise TrainConfigError(f"{source}: optim.word_time_weight needs word grounding "
                                   "(optim.grounding_weight > 0, optim.grounding_mode = 'word')")
        if o.time_head_weight and self.system.sp_ulysses * self.system.sp_ring > 1:
            raise TrainConfigError(f"{source}: optim.time_head_weight is not supported with sequence parallelism "
                                   f"(sp_ulysses x sp_ring > 1)")
        self._check_probe_weight(source, "align_weight")
        if o.read_batch < 0:
            raise TrainConfigError(f"{source}: optim.read_batch must be >= 0, got {o.read_batch!r}")
        if not (math.isfinite(o.read_weight) and o.read_weight >= 0):
            raise TrainConfigError(f"{source}: optim.read_weight must be a finite number >= 0, got {o.read_weight!r}")
        if o.read_event_words and not (o.read_batch and o.grounding_weight and o.grounding_mode == "word"):
            raise TrainConfigError(f"{source}: optim.read_event_words needs optim.read_batch > 0 and word grounding "
                                   "(optim.grounding_weight > 0, optim.grounding_mode = 'word')")
        if o.read_batch and self.system.sp_ulysses * self.system.sp_ring > 1:
            raise TrainConfigError(f"{source}: optim.read_batch is not supported with sequence parallelism "
                                   f"(sp_ulysses x sp_ring > 1)")
        if self.run.objective not in ("lm", "encoder"):
            raise TrainConfigError(f"{source}: run.objective must be 'lm' or 'encoder', got {self.run.objective!r}")
        if not self.data.registry:
            raise TrainConfigError(f"{source}: data.registry is required (a registry TOML, see afnext.data.mixture)")


_SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _assign(target, section: str, key: str, value: Any, source: str) -> None:
    names = {f.name: f for f in dataclasses.fields(target)}
    if key not in names:
        raise TrainConfigError(f"{source}: unknown key {section}.{key}; valid keys: {', '.join(names)}")
    current = getattr(target, key)
    # Fix: a non-table for a table key (`optim.lr = 1e-3`) used to be stored as is and crash validate() with a
    # traceback; and `save_every = true` was reported as "must be a boolean". Both are now one-line errors.
    if isinstance(current, dict):
        if not isinstance(value, dict):
            raise TrainConfigError(f"{source}: {section}.{key} must be a table, e.g. {{ encoder = ..., adapter = ..., "
                                   f"llm = ... }}, got {value!r}")
        value = {**current, **value}
    elif isinstance(current, bool) != isinstance(value, bool):
        want = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}[type(current)]
        raise TrainConfigError(f"{source}: {section}.{key} must be {want}, got {value!r}")
    elif isinstance(current, (int, float)) and not isinstance(current, bool):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TrainConfigError(f"{source}: {section}.{key} must be a number, got {value!r}")
        if isinstance(current, int):
            if not float(value).is_integer():
                raise TrainConfigError(f"{source}: {section}.{key} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
    elif isinstance(current, str) and not isinstance(value, str):
        raise TrainConfigError(f"{source}: {section}.{key} must be a string, got {value!r}")
    elif isinstance(current, list) and not isinstance(value, list):
        raise TrainConfigError(f"{source}: {section}.{key} must be a list, got {value!r}")
    setattr(target, key, value)


def apply_override(d: dict, item: str) -> None:
    """`section.key=value` or `section.key.sub=value`, value parsed as TOML when it parses."""
    if "=" not in item:
        raise TrainConfigError(f"--set {item!r}: expected section.key=value")
    path, raw = item.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) < 2:
        raise TrainConfigError(f"--set {item!r}: expected section.key=value (e.g. optim.max_steps=20)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node = d
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TrainConfigError(f"--set {item!r}: {part} is not a table")
    node[parts[-1]] = value
