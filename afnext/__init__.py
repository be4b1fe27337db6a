"""afnext: an open implementation of NVIDIA's Audio Flamingo Next audio-language model.

    from afnext import AFNext, Processor
    model = AFNext.from_pretrained("nvidia/audio-flamingo-next-hf")
    processor = Processor.from_pretrained("nvidia/audio-flamingo-next-hf")
"""

__version__ = "0.1.0"

from afnext.audio import AudioError  # noqa: E402
from afnext.engine import Engine, GenerationConfig  # noqa: E402
from afnext.model.afnext import AFNext  # noqa: E402
from afnext.processor import Processor  # noqa: E402

__all__ = ["AFNext", "AudioError", "Engine", "GenerationConfig", "Processor", "__version__"]
