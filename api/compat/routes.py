"""Every compatibility adapter's routes, as the service mounts them."""

from fastapi import APIRouter

from api.compat import (
    open_reference,
    openai_audio,
    post_call_recordings,
    recording_platform,
    tutorial_batch,
)
from api.compat.deepgram import deepgram_router
from api.compat.jitsi import jitsi_router
from api.compat.live_protocol import live_protocol_router
from api.compat.tutorial_stream import tutorial_stream_router
from api.metrics import ApiMetrics
from config.settings import Settings
from pipeline.call import Admission
from pipeline.runtime import LiveRuntime

# the recording platform's download URLs carry their own signature instead of a key
PUBLIC_PATHS = [recording_platform.DOWNLOAD_PREFIX + "*"]


def compat_routers(
    runtime: LiveRuntime, admission: Admission, settings: Settings, metrics: ApiMetrics
) -> list[APIRouter]:
    return [
        tutorial_stream_router(runtime, admission, settings, metrics),
        live_protocol_router(runtime, admission, settings, metrics),
        deepgram_router(runtime, admission, settings, metrics),
        jitsi_router(runtime, settings, metrics),
        tutorial_batch.router,
        open_reference.open_reference_router(),
        post_call_recordings.router,
        recording_platform.router,
        openai_audio.router,
    ]
