"""Training data: manifests, mixtures, sample construction (tokenize) and sequence packing, plus the
synthetic-audio layer the skills corpus is built from (``tts``: espeak-ng speech; ``sounds``: events,
music and scenes with exact labels)."""
