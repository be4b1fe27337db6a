"""Training data: manifests, mixtures, sample construction (tokenize) and sequence packing."""
