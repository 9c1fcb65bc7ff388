"""All settings in one pydantic model.

Precedence: explicit keyword arguments, then environment variables (``ROOMSCRIBE_`` prefix,
``__`` between section and field, e.g. ``ROOMSCRIBE_LIVE__PARTIAL_INTERVAL_S=0.8``; ``NATS_URL``
is read as is), then the TOML file named by ``ROOMSCRIBE_CONFIG``, then ``config/default.toml``.
"""

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TOML = Path(__file__).with_name("default.toml")


class LiveSettings(BaseModel):
    model: str = "whisper-tiny.en"
    final_model: str | None = Field(
        default=None,
        description="a stronger Whisper model for live finals (two-pass); None = `model`",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when a device is visible, else CPU"
    )
    language: str = Field(
        default="en", description="of streams that name none; auto = detect per utterance"
    )
    multilingual_model: str = Field(
        default="whisper-base",
        description="streams whose language the live model does not know (or auto) use this",
    )
    decode_threads: int = Field(
        default=0,
        ge=0,
        description="0 = CPU cores - 1 (at least 1); all cores in the recognition process",
    )
    final_cpu_threads: int = Field(
        default=1,
        ge=1,
        description="CPU threads one final decode computes on (its encoder and beam search); more pays only where cores are idle while a final runs (2 of 2 cores beside the bridge was slower)",
    )
    recognizer_process: bool = Field(
        default=True,
        description="decode live streams in a child process, so the loop that receives RTP never waits behind recognition",
    )
    recognizer_nice: int = Field(
        default=10, ge=0, le=19, description="CPU priority of that process below the bot's"
    )
    partial_nice: int = Field(
        default=9,
        ge=0,
        le=19,
        description="partial decodes run on threads this much nicer than finals (Linux), so a final sharing a core with a partial gets most of it",
    )
    partial_interval_s: float = Field(default=0.6, gt=0)
    partial_context_audio: bool = Field(
        default=False,
        description="partials hear the speaker's previous finals as audio (as finals do), not as a text prompt: about 3x their decode cost",
    )
    final_window_s: float = Field(
        default=30.0,
        ge=0,
        le=30,
        description="finals encode what they hear (with the previous finals' audio) plus 1 s, at least this many seconds; 30 = Whisper's whole window",
    )
    final_ahead_s: float = Field(
        default=0.21,
        ge=0,
        description="after this much silence a final is decoded ahead of its endpoint (min_silence_s), on what it would hear; kept when the endpoint comes, wasted when speech goes on; 0 = off",
    )
    max_partial_interval_s: float = Field(default=3.0, gt=0)
    max_utterance_s: float = Field(default=12.0, gt=1)
    max_load: float = Field(
        default=5.0,
        ge=1,
        description="how far overload may stretch the partial cadence; 1 keeps it fixed",
    )
    min_silence_s: float = Field(default=0.45, gt=0)
    vad_mode: int = Field(default=2, ge=0, le=3)
    input_queue_s: float = Field(
        default=30.0, gt=0, description="audio a stream buffers before it drops"
    )


class NatsSettings(BaseModel):
    url: str | None = None
    subject_prefix: str = "roomscribe"
    embedded_port: int = 0
    embedded_websocket_port: int = 0
    embedded_host: str = Field(
        default="127.0.0.1", description="0.0.0.0 lets remote overlays connect"
    )
    embedded_monitor_port: int | None = Field(
        default=None, description="HTTP monitoring; None = off, 0 = any"
    )
    reconnect_wait_s: float = Field(default=0.5, gt=0)
    flush_timeout_s: float = Field(
        default=2.0, gt=0, description="a publish batch unconfirmed after this is resent"
    )
    outbox_limit: int = Field(default=10_000, gt=0, description="frames held while NATS is away")


class BridgeSettings(BaseModel):
    host_addresses: list[str] = Field(default_factory=list, description="empty = all interfaces")
    ice_servers: list[dict[str, Any]] = Field(default_factory=list)
    idle_timeout_s: float = Field(default=60.0, gt=0)
    track_stall_s: float = Field(
        default=10.0, gt=0, description="a track silent this long is flushed (its peer may be gone)"
    )
    room_claim_ttl_s: float = Field(
        default=15.0,
        gt=0,
        description="bots sharing a NATS: a room claim not refreshed this long is a lost bot's",
    )
    udp_receive_buffer_kb: int = Field(
        default=4096,
        ge=0,
        description="SO_RCVBUF asked for on ICE sockets (the OS may cap it); 0 = OS default",
    )
    opus_dtx: bool = Field(
        default=True,
        description="ask senders for Opus DTX (usedtx=1): a packet per 400 ms in silence",
    )
    decode_on_loop: bool = Field(
        default=True,
        description="decode received audio on the event loop, Opus to mono (false = aiortc's "
        "decoder thread per track, 48 kHz stereo)",
    )
    bearer_tokens: list[str] = Field(
        default_factory=list, description="accepted by bridge routes only, besides API keys"
    )
    janus_urls: list[str] = Field(
        default_factory=list, description="Janus API bases POST /v1/janus/join may join"
    )
    janus_any_url: bool = Field(
        default=False,
        description="also join other Janus URLs (public addresses only unless "
        "api.allow_private_urls)",
    )
    janus_join_timeout_s: float = Field(default=30.0, gt=0)


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: list[str] = Field(default_factory=list)
    max_upload_mb: float = 500.0
    download_timeout_s: float = 60.0
    allow_private_urls: bool = False
    max_download_mb: float = 500.0
    max_page_size: int = Field(default=100, ge=1)
    public_paths: list[str] = Field(
        default_factory=lambda: ["/health", "/overlay", "/overlay/overlay.js"],
        description="paths (or prefixes ending in *) open without an API key",
    )
    max_json_kb: int = Field(default=256, gt=0, description="JSON and SDP request bodies")
    body_timeout_s: float = Field(
        default=15.0, gt=0, description="a JSON body must arrive within this"
    )
    upload_idle_timeout_s: float = Field(
        default=30.0, gt=0, description="an upload that sends nothing this long is ended"
    )
    allow_model_paths: bool = Field(
        default=False, description="API callers may name model folders outside the catalog"
    )
    sync_wait_s: float = Field(
        default=900.0,
        gt=0,
        description="how long a route that answers with the finished job (OpenAI audio) waits",
    )
    shutdown_grace_s: int = Field(
        default=10, gt=0, description="seconds requests still open at shutdown get"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="browser origins (scheme://host[:port]) allowed to call the API; '*' = any",
    )


class LimitsSettings(BaseModel):
    """Admission control of live streams (WebSocket sessions and WebRTC tracks alike)."""

    max_streams: int = Field(default=16, ge=0, description="live streams at once; 0 = no limit")
    max_stream_s: float = Field(
        default=4 * 3600.0, gt=0, description="longest live stream (audio or wall clock)"
    )
    idle_timeout_s: float = Field(default=60.0, gt=0, description="a stream without audio ends")
    retry_after_s: int = Field(default=5, ge=1, description="Retry-After of a refused request")
    max_loop_lag_ms: float = Field(
        default=250.0, ge=0, description="refuse new streams past this event-loop lag p95; 0 = off"
    )
    max_backlog_s: float = Field(
        default=10.0,
        ge=0,
        description="refuse new streams while a stream's recognition is this far behind; 0 = off",
    )
    refuse_on_udp_drops: bool = Field(
        default=True, description="refuse new streams while the kernel drops datagrams"
    )
    headroom_window_s: float = Field(default=10.0, gt=0, description="window of those checks")
    listen_token_ttl_s: float = Field(
        default=300.0, gt=0, description="lifetime of a POST /v1/listen/token token"
    )


class OverlaySettings(BaseModel):
    """The caption overlay page and its NATS credentials."""

    auth: bool = Field(
        default=True,
        description="embedded NATS: WebSocket clients need a room-scoped token from "
        "POST /v1/rooms/{room}/overlay-token",
    )
    token_ttl_s: float = Field(default=24 * 3600.0, gt=0, description="overlay token lifetime")
    max_tokens: int = Field(default=256, ge=1, description="overlay tokens live at once")


class PostCallSettings(BaseModel):
    model: str = "whisper-base"
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="of the post-call and batch models (see live.device)"
    )
    run_worker: bool = True
    summarize: bool = True
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    llm_timeout_s: float = 60.0
    llm_max_prompt_chars: int = Field(
        default=120_000, gt=0, description="longer transcripts use the embedded summarizer"
    )
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_s: float = Field(default=2.0, gt=0, description="first retry waits up to this")
    webhook_backoff_max_s: float = Field(default=600.0, gt=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    recording_platform_webhook_url: str | None = Field(
        default=None,
        description="receives recording.* / transcript.* events in the recording platform's "
        "shape (api/compat/recording_platform.py)",
    )
    batch_model: str = Field(default="whisper-base", description="REST batch jobs without a model")
    beam_size: int = Field(default=5, ge=1, le=16)
    redact_pii: bool | list[str] = Field(
        default=False, description="post-call jobs from ended calls"
    )
    job_ack_wait_s: float = Field(
        default=60.0, gt=1, description="a job not heard from this long is redelivered"
    )
    job_max_attempts: int = Field(default=3, ge=1, description="deliveries before a job is failed")
    checkpoint_s: float = Field(
        default=30.0,
        gt=0,
        description="how often open calls' new audio is copied to the object store (another bot finishes a call whose bot died)",
    )
    checkpoint_stale_s: float = Field(
        default=90.0,
        gt=0,
        description="a call not checkpointed this long (and 3 intervals) belongs to a lost bot",
    )
    handover_retry_s: float = Field(
        default=60.0, gt=0, description="how often an ended call not yet handed over is retried"
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ROOMSCRIBE_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path("./data")
    live: LiveSettings = Field(default_factory=LiveSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    bridge: BridgeSettings = Field(default_factory=BridgeSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    postcall: PostCallSettings = Field(default_factory=PostCallSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    overlay: OverlaySettings = Field(default_factory=OverlaySettings)

    @property
    def calls_dir(self) -> Path:
        """Where this process records its calls (see ``pipeline.recorder``)."""
        return Path(self.data_dir) / "calls"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    data: dict[str, Any] = tomllib.loads(DEFAULT_TOML.read_text())
    chosen = path or (
        Path(os.environ["ROOMSCRIBE_CONFIG"]) if os.environ.get("ROOMSCRIBE_CONFIG") else None
    )
    if chosen is not None:
        data = _merge(data, tomllib.loads(chosen.read_text()))
    env = Settings().model_dump(exclude_unset=True)
    data = _merge(data, env)
    if os.environ.get("NATS_URL"):
        data.setdefault("nats", {})["url"] = os.environ["NATS_URL"]
    data = _merge(data, overrides)
    return Settings.model_validate(data)
