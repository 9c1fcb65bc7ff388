"""``roomscribe demo``: a simulated three-person call over WebRTC, live captions, post-call.

Starts the service in-process (or uses the one at ``--url``), publishes the packaged LibriVox
utterances as Alice, Bob and Carol (with overlap), prints their captions from NATS as they
arrive, ends the call, waits for the post-call job and prints and saves its results.
"""

import asyncio
import contextlib
import io
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx
import nats
import nats.errors
import uvicorn
from nats.aio.msg import Msg

from config import Settings
from pipeline.audio_io import decode_file
from protocol import CaptionFrame, EventFrame, Subjects, parse_frame
from sfu_bridge.errors import BridgeError

if TYPE_CHECKING:
    from sfu_bridge.room_client import ScriptedParticipant

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
PACKAGE = "pocketsphinx-testdata"
ROOM = "demo"
EXPORTS = ("json", "srt", "vtt", "txt")
# (participant, name, utterance, start second): Bob starts before Alice ends, Bob again
# before Alice's second turn ends, so two people talk at once twice.
SCRIPT = [
    ("alice", "Alice", "0870", 0.5),
    ("bob", "Bob", "0880", 6.6),
    ("carol", "Carol", "0890", 10.5),
    ("alice", "Alice", "0930", 16.5),
    ("bob", "Bob", "0920", 19.0),
]
# A closing exchange, synthesized when espeak-ng is installed, so the summary has an action
# item with an owner and a decision to show: (participant, voice, text, start second).
CLOSING = [
    ("alice", "en-us+f3", "Carol, can you write the summary before Friday?", 25.8),
    ("carol", "en-us+f2", "Yes, I will write the summary before Friday.", 29.8),
    ("bob", "en-us", "Good. We decided to read the next chapter on Monday.", 33.2),
]


class DemoError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def clock(seconds: float) -> str:
    minutes, rest = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes):02d}:{rest:04.1f}"


class CaptionPrinter:
    """Finals as ``[mm:ss.s] Name: text`` lines; on a TTY the open partials on one status line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.partials: dict[str, str] = {}
        self.call_id: str | None = None
        self.speakers: set[str] = set()

    def show(self, frame: CaptionFrame) -> None:
        who = frame.name or frame.participant
        if frame.type == "partial":
            self.partials[frame.participant] = f"{who}: {frame.text.strip()}"
            self._status()
            return
        self.partials.pop(frame.participant, None)
        if frame.text.strip():
            self.speakers.add(who)
            self._clear()
            print(f"[{clock(frame.start)}] {who}: {frame.text.strip()}", file=self.out, flush=True)
        self._status()

    def _clear(self) -> None:
        if self.tty:
            self.out.write("\r\033[K")

    def _status(self) -> None:
        if not self.tty:
            return
        width = shutil.get_terminal_size().columns - 1
        line = " | ".join(self.partials.values())
        self.out.write("\r\033[K" + ("… " + line[-(width - 2) :] if len(line) > width else line))
        self.out.flush()

    def done(self) -> None:
        self.partials.clear()
        self._clear()
        self.out.flush()

    async def on_message(self, msg: Msg) -> None:
        try:
            frame = parse_frame(msg.data)
        except ValueError:
            return
        if isinstance(frame, CaptionFrame):
            self.show(frame)
        elif isinstance(frame, EventFrame) and frame.event == "call.started":
            self.call_id = frame.call_id


def demo_participants() -> list["ScriptedParticipant"]:
    """Alice, Bob and Carol with the packaged LibriVox speech on the demo script's timeline."""
    from sfu_bridge.room_client import ScriptedParticipant, Speech

    if not LIBRIVOX.is_dir():
        raise DemoError(
            "MISSING_PACKAGE",
            f"{LIBRIVOX} is missing: install the Debian package {PACKAGE} "
            f"(apt-get install {PACKAGE})",
        )
    files = {f.stem.rsplit("-", 1)[-1]: f for f in LIBRIVOX.glob("*.wav")}
    missing = [utt for _, _, utt, _ in SCRIPT if utt not in files]
    if missing:
        raise DemoError(
            "MISSING_PACKAGE",
            f"the demo speech is not in {LIBRIVOX}: install the Debian package {PACKAGE} "
            f"(apt-get install {PACKAGE})",
        )
    people: dict[str, ScriptedParticipant] = {}
    for participant, name, utt, at in SCRIPT:
        person = people.setdefault(participant, ScriptedParticipant(participant, name, "en"))
        person.speech.append(Speech(at, decode_file(files[utt])))
    espeak = shutil.which("espeak-ng")
    if espeak is not None:
        for participant, voice, text, at in CLOSING:
            wav = subprocess.run(
                [espeak, "-v", voice, "-s", "135", "--stdout", text],
                capture_output=True,
                check=True,
            ).stdout
            people[participant].speech.append(Speech(at, decode_file(io.BytesIO(wav))))
    return list(people.values())


class _QuietServer(uvicorn.Server):
    """Leaves SIGINT to asyncio, so Ctrl-C cancels the demo and everything unwinds."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def local_service(settings: Settings) -> AsyncIterator[tuple[str, str, Settings]]:
    """The whole service in this process on a free port: (base URL, NATS URL, settings)."""
    from roomscribe.service import running_service
    from sfu_bridge.room_client import host_address

    if not settings.bridge.host_addresses:
        bridge = settings.bridge.model_copy(update={"host_addresses": [host_address()]})
        settings = settings.model_copy(update={"bridge": bridge})
    async with running_service(settings) as service:
        config = uvicorn.Config(service.app, host="127.0.0.1", port=0, log_level="warning")
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise DemoError("SERVICE_FAILED", "the HTTP server stopped while starting")
                await asyncio.sleep(0.05)
            port = server.servers[0].sockets[0].getsockname()[1]
            yield f"http://127.0.0.1:{port}", str(service.settings.nats.url), service.settings
        finally:
            server.should_exit = True
            await task


async def wait_for_job(
    client: httpx.AsyncClient, call_id: str, out: TextIO, timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job_id: str | None = None
    last = ""
    while time.monotonic() < deadline:
        if job_id is None:
            listed = await client.get("/v1/transcripts", params={"limit": 50})
            listed.raise_for_status()
            page = listed.json()
            for job in page["data"]:
                if job["kind"] == "postcall" and job["source"].get("call_id") == call_id:
                    job_id = job["id"]
        if job_id is not None:
            reply = await client.get(f"/v1/transcripts/{job_id}")
            reply.raise_for_status()
            view: dict[str, Any] = reply.json()
            line = f"post-call {view['status']} {view['progress']:3d}% {view['message']}".rstrip()
            if line != last:
                print(line, file=out, flush=True)
                last = line
            if view["status"] == "completed":
                return view
            if view["status"] in ("failed", "cancelled"):
                error = view.get("error") or {}
                raise DemoError(
                    error.get("code", "JOB_FAILED"), error.get("message", "post-call job failed")
                )
        await asyncio.sleep(0.5)
    raise DemoError("TIMEOUT", f"no finished post-call job for call {call_id} in {timeout_s:.0f} s")


def summary_lines(transcript: dict[str, Any]) -> list[str]:
    summary = transcript.get("summary")
    if not summary:
        return ["(no summary)"]
    lines: list[str] = []
    for title, key in (
        ("Summary", "summary"),
        ("Topics", "topics"),
        ("Action items", "action_items"),
        ("Decisions", "decisions"),
    ):
        items = summary.get(key) or []
        lines.append(f"{title}:" + ("" if items else " none"))
        for item in items:
            owner = f" (owner: {item['owner']})" if item.get("owner") else ""
            due = f" (due: {item['due']})" if item.get("due") else ""
            span = f"[{clock(item['start'])}-{clock(item['end'])}]"
            lines.append(f"  {span} {item['text']}{owner}{due}")
    return lines


async def save_exports(
    client: httpx.AsyncClient, job_id: str, call_id: str, data_dir: Path
) -> list[Path]:
    folder = data_dir / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in EXPORTS:
        reply = await client.get(f"/v1/transcripts/{job_id}.{fmt}")
        reply.raise_for_status()
        path = folder / f"{call_id}.{fmt}"
        path.write_bytes(reply.content)
        paths.append(path)
    return paths


async def _nats_error(exc: Exception) -> None:
    """Connection trouble surfaces as the failing call's exception; no tracebacks meanwhile."""


async def run_call(
    participants: list["ScriptedParticipant"],
    base_url: str,
    nats_url: str,
    settings: Settings,
    out: TextIO,
    api_key: str | None = None,
    bridge_token: str | None = None,
    job_timeout_s: float = 300.0,
) -> list[Path]:
    from sfu_bridge.room_client import RoomPublisher

    subjects = Subjects(settings.nats.subject_prefix)
    printer = CaptionPrinter(out)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    nc = await nats.connect(
        nats_url,
        name="roomscribe-demo",
        connect_timeout=5,
        max_reconnect_attempts=3,
        error_cb=_nats_error,
    )
    try:
        await nc.subscribe(subjects.room_captions(ROOM), cb=printer.on_message)
        await nc.subscribe(subjects.events(ROOM), cb=printer.on_message)
        await nc.flush()
        publisher = RoomPublisher(base_url, ROOM, participants, token=bridge_token)
        names = ", ".join(p.name or p.participant for p in participants)
        length = max(p.duration() for p in participants)
        print(f"call in room {ROOM!r}: {names}, {length:.0f} s of speech over WebRTC", file=out)
        try:
            await publisher.start()
            await publisher.wait_played()
            await asyncio.sleep(2.0)  # let the last utterances reach their finals
        finally:
            await publisher.end()
        await asyncio.sleep(1.0)
        printer.done()
    finally:
        await nc.close()
    if printer.call_id is None:
        raise DemoError("NO_CALL", "no call.started event arrived on NATS")
    print(f"call {printer.call_id} ended; waiting for the post-call transcript", file=out)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        job = await wait_for_job(client, printer.call_id, out, job_timeout_s)
        exported = await client.get(f"/v1/transcripts/{job['id']}.txt")
        exported.raise_for_status()
        text = exported.text
        print("\n== Post-call transcript ==", file=out)
        print(text.rstrip(), file=out)
        print("\n== Summary ==", file=out)
        print("\n".join(summary_lines(job["transcript"])), file=out)
        paths = await save_exports(client, job["id"], printer.call_id, Path(settings.data_dir))
    print("\n== Exports ==", file=out)
    for path in paths:
        print(f"  {path}", file=out)
    out.flush()
    return paths


async def run_demo(
    settings: Settings,
    participants: list["ScriptedParticipant"],
    url: str | None = None,
    nats_url: str | None = None,
) -> list[Path]:
    """Run the demo against ``url`` (whose NATS is ``nats_url``) or an in-process service."""
    try:
        return await _run_demo(settings, participants, url, nats_url)
    except BridgeError as exc:
        raise DemoError(exc.code, f"the WebRTC session was refused: {exc.message}") from exc
    except httpx.HTTPStatusError as exc:
        raise DemoError(
            "HTTP_ERROR", f"{exc.request.url}: HTTP {exc.response.status_code}"
        ) from exc
    except (httpx.HTTPError, OSError, nats.errors.Error) as exc:
        raise DemoError("UNREACHABLE", f"{type(exc).__name__}: {exc}") from exc


async def _run_demo(
    settings: Settings,
    participants: list["ScriptedParticipant"],
    url: str | None,
    nats_url: str | None,
) -> list[Path]:
    api_key = settings.api.api_keys[0] if settings.api.api_keys else None
    token = settings.bridge.bearer_tokens[0] if settings.bridge.bearer_tokens else None
    if url is not None:
        given = nats_url or settings.nats.url
        if not given:
            raise DemoError("MISSING_NATS", "--url needs --nats (or NATS_URL): the service's NATS")
        return await run_call(participants, url, str(given), settings, sys.stdout, api_key, token)
    print("starting roomscribe (embedded NATS, live models, WebRTC bridge, API, worker)")
    async with local_service(settings) as (base_url, local_nats, running):
        print(f"service at {base_url}, NATS at {local_nats}, data in {running.data_dir}")
        return await run_call(
            participants, base_url, local_nats, running, sys.stdout, api_key, token
        )
