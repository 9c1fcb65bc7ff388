"""``roomscribe join janus`` as a user runs it: the call it captions is handed over to
post-call (recording in the object store, one queued job) when it leaves."""

import asyncio
import signal
from pathlib import Path

import nats
import pytest

from pipeline.jobs import JobKind, JobState, JobStore
from pipeline.recorder import CallRecord
from protocol import CaptionFrame, parse_frame
from tests.bridge_peers import SpeechTrack, host_address, utterance
from tests.conftest import librivox_files
from tests.janus_server import JanusPublisher, start_janus, stop_janus
from tests.service_helpers import roomscribe_process, stop_process

pytestmark = [pytest.mark.janus, pytest.mark.timeout(180)]

SPEECH = "sense_and_sensibility_01_austen_64kb-0890"
PREFIX = "rs-join"


async def test_join_janus_hands_its_call_over(nats_url: str, tmp_path: Path) -> None:
    librivox_files()
    janus = start_janus(tmp_path / "janus", host_address())
    nc = await nats.connect(nats_url)
    bot = None
    try:
        finals: list[CaptionFrame] = []

        async def collect(msg: nats.aio.msg.Msg) -> None:
            frame = parse_frame(msg.data)
            if isinstance(frame, CaptionFrame) and frame.type == "final" and frame.text.strip():
                finals.append(frame)

        await nc.subscribe(f"{PREFIX}.v1.captions.>", cb=collect)
        publisher = JanusPublisher(janus, "Jo", SpeechTrack())
        await publisher.join()
        env = {
            "NATS_URL": nats_url,
            "ROOMSCRIBE_NATS__SUBJECT_PREFIX": PREFIX,
            "ROOMSCRIBE_BRIDGE__HOST_ADDRESSES": f'["{host_address()}"]',
            "ROOMSCRIBE_POSTCALL__RUN_WORKER": "false",
        }
        command = ["join", "janus", "--url", janus.url, "--room", str(janus.room)]
        bot = roomscribe_process(
            [*command, "--data-dir", str(tmp_path / "data")], env, tmp_path / "bot.log"
        )
        store = await JobStore.open(nc, PREFIX)
        async with asyncio.timeout(60):
            while "joined Janus room" not in (tmp_path / "bot.log").read_text():  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # the bot subscribes to Jo's feed
        publisher.track.say(utterance(SPEECH))
        await publisher.track.spoken.wait()
        async with asyncio.timeout(30):
            while not finals:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        bot.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(bot.wait, 30) == 0, (tmp_path / "bot.log").read_text()
        await publisher.leave()

        (job,) = await store.all()
        assert (job.kind, job.status) == (JobKind.POSTCALL, JobState.QUEUED)
        call_id = job.source.call_id
        assert call_id and await store.has_call(call_id)
        fetched = tmp_path / "fetched"
        fetched.mkdir()
        await store.download_call_file(call_id, "call.json", fetched / "call.json")
        call = CallRecord.load(fetched)
        assert call.job_id == job.id and call.end_reason is not None
        assert [p.name for p in call.participants] == ["Jo"]
        assert {f.participant for f in finals} == {call.participants[0].participant}
    finally:
        if bot is not None:
            stop_process(bot)
        stop_janus(janus)
        await nc.close()
