"""roomscribe speech-to-text for LiveKit Agents: a self-hosted server's live recognizer
behind ``stt.STT`` (streaming and ``recognize``), over its ``WS /v1/listen``."""

from livekit.agents import Plugin

from .log import logger
from .stt import STT, SpeechStream, STTOptions
from .version import __version__

__all__ = ["STT", "STTOptions", "SpeechStream", "__version__"]


class RoomscribePlugin(Plugin):
    def __init__(self) -> None:
        super().__init__(__name__, __version__, __package__ or __name__, logger)


Plugin.register_plugin(RoomscribePlugin())
