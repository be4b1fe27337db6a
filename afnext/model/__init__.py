"""The AF-Next network in plain PyTorch: encoder, RoTE, adapter, Qwen2 decoder, and the seam they share."""
