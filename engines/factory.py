"""Model name -> loaded engine."""

import os

from config import Settings
from engines.base import Engine, ModelNotFoundError
from engines.device import resolve_device
from engines.models import (
    ResolvedModel,
    UnsupportedLanguageError,
    check_language,
    normalize_language,
    recognizes,
    resolve,
)
from engines.scheduler import DecodeScheduler
from engines.vad import VadConfig
from engines.whisper_chunked import WhisperChunkedEngine, WhisperOptions


def decode_threads(settings: Settings) -> int:
    """Default: one core fewer than the machine has, so the event loop (WebRTC packets,
    NATS) always has a core of its own; decoding backs off instead of starving it."""
    return settings.live.decode_threads or max(1, (os.cpu_count() or 1) - 1)


def live_scheduler(settings: Settings) -> DecodeScheduler:
    """The decode scheduler of a process that decodes live streams (not started)."""
    live = settings.live
    return DecodeScheduler(
        decode_threads(settings), max_load=live.max_load, partial_nice=live.partial_nice
    )


def pick_live_model(
    settings: Settings, live: Engine, language: str | None
) -> tuple[str, str | None]:
    """The model for a live stream in ``language`` (None: ``live.language``; "auto":
    detect), and the normalized language its stream gets (None: detect). The live model
    when it recognizes the language, else ``live.multilingual_model``."""
    wanted = normalize_language(settings.live.language if language is None else language)
    if recognizes(live.info.languages, wanted):
        return live.info.name, wanted
    fallback = settings.live.multilingual_model
    try:
        check_language(fallback, wanted)
    except UnsupportedLanguageError as exc:
        raise UnsupportedLanguageError(wanted, f"{live.info.name} or {fallback}") from exc
    return fallback, wanted


def present_model(name: str, settings: Settings) -> ResolvedModel:
    """``name`` resolved; raises :class:`ModelNotFoundError` when it is not on disk."""
    model = resolve(name, settings.data_dir)
    if not model.present:
        raise ModelNotFoundError(name, f"not downloaded yet: run `roomscribe models pull {name}`")
    return model


def load_engine(name: str, settings: Settings, *, multilingual: bool = False) -> Engine:
    """The live engine for ``name`` (catalog name, model folder or URL already pulled).
    A ``multilingual`` one has no default language: its streams name theirs or detect it."""
    model = present_model(name, settings)
    live = settings.live
    if model.kind == "whisper":
        options = WhisperOptions(
            partial_interval_s=live.partial_interval_s,
            max_partial_interval_s=live.max_partial_interval_s,
            max_utterance_s=live.max_utterance_s,
            vad=VadConfig(mode=live.vad_mode, min_silence_s=live.min_silence_s),
            partial_context_audio=live.partial_context_audio,
            final_window_s=live.final_window_s,
            final_ahead_s=live.final_ahead_s,
        )
        # The multilingual engine is the stronger model already; an English final model
        # would turn its finals into English.
        final_name = None if multilingual else live.final_model
        final = resolve(final_name, settings.data_dir) if final_name else None
        if final is not None and (final.kind != "whisper" or not final.present):
            raise ModelNotFoundError(
                final.name, "live.final_model must be a Whisper model that is present"
            )
        device = resolve_device(live.device)
        return WhisperChunkedEngine(
            model.path,
            model.name,
            options=options,
            language=None if multilingual else normalize_language(live.language),
            parallel=decode_threads(settings),
            final_model_path=final.path if final else None,
            final_cpu_threads=live.final_cpu_threads,
            device=device.kind,
            compute_type=device.compute_type,
            partial_nice=live.partial_nice,
        )
    from engines.sherpa_online import SherpaOnlineEngine

    return SherpaOnlineEngine(model, num_threads=1)
