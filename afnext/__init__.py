"""afnext: an open implementation of NVIDIA's Audio Flamingo Next audio-language model."""

__version__ = "0.1.0"
