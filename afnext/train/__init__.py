"""Training: the four-phase AF-Next curriculum (plus a from-scratch stage 0 for nano models).

config.py  stage configuration (TOML files under configs/, `--set key=value` overrides)
groups.py  module groups (encoder / adapter / llm), freeze policies, LoRA, learning rates
state.py   atomic checkpoints and exact resume
loop.py    the training loop (packing, loss normalisation, FSDP2, metrics)
"""
