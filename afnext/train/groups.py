"""Module groups, freeze policies, LoRA and the optimiser, applied to a built model from outside.

The AF-Next curriculum trains different parts at each stage (pretrain-1: adapter only; pretrain-2:
encoder + adapter; mid-training: everything), so parameters are grouped by module (encoder — which
includes the parameter-free RoTE —, adapter, llm with the LM head) and each group has a policy
(train / frozen / lora) and its own learning rate. LoRA replaces the LLM's chosen Linear layers with
`LoRALinear` wrappers (base frozen, low-rank update trained); `merge_lora` folds them back so an
export is an ordinary checkpoint.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from afnext.model.afnext import AFNext
from afnext.train.config import GROUPS, OptimConfig


def group_of(name: str) -> str:
    """Module group of a parameter name of AFNext."""
    head = name.split(".", 1)[0]
    if head in ("encoder", "rote"):
        return "encoder"
    if head == "adapter":
        return "adapter"
    if head in ("llm", "lm_head"):
        return "llm"
    raise KeyError(f"parameter {name} belongs to no module group")


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B(A(x)); A random, B zero, so training starts from the base model."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        dtype=self.base.weight.dtype, device=self.base.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + (self.lora_b @ self.lora_a) * self.scale)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def apply_lora(module: nn.Module, targets: list[str], rank: int, alpha: float) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name in targets:
            setattr(module, name, LoRALinear(child, rank, alpha))
            count += 1
        else:
            count += apply_lora(child, targets, rank, alpha)
    return count


def merge_lora(module: nn.Module) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, LoRALinear):
            setattr(module, name, child.merged())
            count += 1
        else:
            count += merge_lora(child)
    return count


def apply_policies(model: AFNext, optim: OptimConfig) -> dict[str, int]:
    """Set requires_grad per group and insert LoRA; returns trainable parameter counts per group."""
    for name in GROUPS:
        policy = optim.freeze.get(name, "train")
        modules = {"encoder": [model.encoder], "adapter": [model.adapter], "llm": [model.llm, model.lm_head]}[name]
        for m in modules:
            m.requires_grad_(policy == "train")
        if policy == "lora":
            n = apply_lora(model.llm, optim.lora_targets, optim.lora_rank, optim.lora_alpha)
            if n == 0:
                raise ValueError(f"LoRA targets {optim.lora_targets} match no Linear layer of the LLM")
    # Whisper's sinusoidal position table is never trained (as in the reference).
    model.encoder.embed_positions.requires_grad_(False)
    counts = {g: 0 for g in GROUPS}
    for n, p in model.named_parameters():
        if p.requires_grad:
            counts[group_of(n)] += p.numel()
    return counts


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    groups = []
    for g in GROUPS:
        params = [p for n, p in model.named_parameters() if p.requires_grad and group_of(n) == g]
        if not params:
            continue
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # norms and biases: no weight decay
        lr = float(optim.lr.get(g, 0.0))
        for ps, wd in ((decay, optim.weight_decay), (no_decay, 0.0)):
            if ps:
                groups.append({"params": ps, "lr": lr, "initial_lr": lr, "weight_decay": wd, "group": g})
    if not groups:
        raise ValueError("no trainable parameters")
    # foreach=False keeps the update order identical however parameters are sharded.
    return torch.optim.AdamW(groups, betas=tuple(optim.betas), eps=1e-8, foreach=False)


def lr_factor(step: int, total: int, warmup_ratio: float, min_ratio: float, cycles: int = 1) -> float:
    """Linear warmup over ceil(warmup_ratio * cycle) steps, then cosine down to min_ratio, where a cycle is
    total / cycles steps: with ``cycles`` > 1 the schedule restarts (warm-up and cosine again) at each
    cycle's start, the last cycle taking any remainder."""
    if cycles > 1:
        length = max(1, total // cycles)
        cycle = min(step // length, cycles - 1)
        step, total = step - cycle * length, (total - (cycles - 1) * length if cycle == cycles - 1 else length)
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
