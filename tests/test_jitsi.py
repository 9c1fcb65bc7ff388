"""The Jitsi Videobridge socket (``WS /transcribe``) against the real service and nats-server:
LibriVox speech as 20 ms Opus packets on three tags, as the bridge sends them."""

import asyncio
import base64
import io
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import av
import httpx
import jiwer
import numpy as np
import pytest
from nats.aio.msg import Msg
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api.compat.jitsi import (
    OggOpusPackets,
    Rejected,
    Reorder,
    TagStream,
    Unwrapper,
    parse_media,
    parse_message,
    participant_of,
    spoken_language,
)
from bench.scoring import normalize, wer
from protocol import CaptionFrame, parse_frame
from roomscribe.jvb_replay import (
    TagProgram,
    Timed,
    media_messages,
    read_dump,
    replay,
    write_dump,
)
from tests.api_helpers import wait_done
from tests.bridge_peers import plain_text, utterance
from tests.conftest import librivox_reference
from tests.listen_helpers import ListenServer, eventually, listen_server

ROOT = Path(__file__).resolve().parents[1]

CLIPS = [
    "sense_and_sensibility_01_austen_64kb-0870",  # 7.1 s
    "sense_and_sensibility_01_austen_64kb-0880",  # 3.0 s
    "sense_and_sensibility_01_austen_64kb-0890",  # 5.3 s
    "sense_and_sensibility_01_austen_64kb-0920",  # 6.1 s
    "sense_and_sensibility_01_austen_64kb-0930",  # 3.3 s
]


def reference(*clips: int) -> str:
    refs = librivox_reference()
    return " ".join(refs[CLIPS[i]] for i in clips)


def assert_captions(spoken: dict[str, str], heard: dict[str, str]) -> None:
    """Corpus WER over every participant within 8 points of the plain model (tiny.en, beam 5,
    VAD) on the same clips, and each participant's own text is theirs (WER <= 0.3)."""
    by_text = {normalize(t): t for t in librivox_reference().values()}
    refs, hyps, plains = [], [], []
    for who, said in spoken.items():
        clips = [t for t in by_text.values() if normalize(t) in normalize(said)]
        refs.append(normalize(said))
        hyps.append(normalize(heard.get(who, "")))
        plains.append(normalize(" ".join(plain_text(c) for c in clips)))
        assert wer(said, heard.get(who, "")) <= 0.3, (who, heard.get(who))
    pooled, plain = float(jiwer.wer(refs, hyps)), float(jiwer.wer(refs, plains))
    assert pooled <= plain + 0.08, (pooled, plain, heard)


def three_tags() -> tuple[list[TagProgram], dict[str, str]]:
    """Three participants who overlap: A sends silence packets between turns, B is a DTX
    sender (no packets in silence), C's chunk numbers and timestamps are strings and its RTP
    clock wraps during the call."""
    programs = [
        TagProgram("aaaa1111-101", [(0.3, utterance(CLIPS[0])), (10.6, utterance(CLIPS[4]))]),
        TagProgram(
            "bbbb2222-202",
            [(2.0, utterance(CLIPS[1])), (8.0, utterance(CLIPS[2]))],
            gaps=True,
            chunk0=55000,
            timestamp0=123456,
        ),
        TagProgram(
            "cccc3333-303",
            [(5.0, utterance(CLIPS[3]))],
            numbers_as_strings=True,
            timestamp0=(1 << 32) - 960 * 100,
        ),
    ]
    spoken = {"aaaa1111": reference(0, 4), "bbbb2222": reference(1, 2), "cccc3333": reference(3)}
    return programs, spoken


def url(server: ListenServer, session: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"sessionId": session, **params}.items())
    return f"ws://127.0.0.1:{server.port}/transcribe?{query}"


async def rejected_counts(server: ListenServer) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=server.http_url) as client:
        text = (await client.get("/metrics")).text
    found = re.findall(r'roomscribe_jitsi_rejected_messages_total\{reason="(\w+)"\} (\S+)', text)
    return {reason: float(value) for reason, value in found}


async def one_job(server: ListenServer) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.http_url) as client:

        async def listed_one() -> bool:
            return bool((await client.get("/v1/transcripts")).json()["data"])

        await eventually(listed_one, 60)
        listed = (await client.get("/v1/transcripts")).json()["data"]
        assert len(listed) == 1, listed
        return await wait_done(client, listed[0]["id"], limit_s=300)


def heard(results: Any, spoken: dict[str, str]) -> dict[str, str]:
    return {who: results.text(who) for who in spoken}


# --- pure parts ----------------------------------------------------------------------------


def test_messages_tags_and_languages() -> None:
    packet = parse_media(
        parse_message(
            '{"event":"media","media":{"tag":"ab12-305123557","chunk":"31456",'
            '"timestamp":"268460","payload":"eAvkwQ=="}}'
        )
    )
    assert (packet.chunk, packet.timestamp, packet.payload) == (31456, 268460, b"\x78\x0b\xe4\xc1")
    assert participant_of("ab12-305123557") == ("ab12", "305123557")
    assert participant_of("someone") == ("someone", None)
    assert spoken_language("en-US") == "en" and spoken_language("") is None
    for text, reason in [
        ("{not json", "malformed_json"),
        ("[1, 2]", "malformed_json"),
        ('{"event":"media"}', "invalid_media"),
        ('{"event":"media","media":{"payload":"AAAA"}}', "invalid_media"),
        ('{"event":"media","media":{"tag":"x","payload":"!!not base64!!"}}', "bad_base64"),
    ]:
        with pytest.raises(Rejected) as caught:
            parse_media(parse_message(text))
        assert caught.value.reason == reason, text


def test_rtp_clock_wraps_and_packets_are_put_in_order() -> None:
    unwrap = Unwrapper()
    assert [unwrap(v) for v in [(1 << 32) - 960, 0, 960]] == [
        (1 << 32) - 960,
        1 << 32,
        (1 << 32) + 960,
    ]
    order = Reorder(depth=2)
    out = []
    for key in [0, 2, 1, 3, 5, 4, 6]:
        out += [k for k, _ in order.add(key, b"x")]
    out += [k for k, _ in order.flush()]
    assert out == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(Rejected, match="twice"):
        order.add(6, b"x")
    with pytest.raises(Rejected) as again:
        order.add(3, b"x")
    assert again.value.reason == "duplicate"
    with pytest.raises(Rejected) as late:
        order.add(-1, b"x")
    assert late.value.reason == "late"


def test_a_restarted_sender_clock_is_followed() -> None:
    pushed: list[tuple[float, int]] = []

    class Stream:
        audio_seconds = 0.0

        def push(self, samples: np.ndarray, at: float) -> None:
            pushed.append((at, samples.size))
            self.audio_seconds = at + samples.size / 16000

    tag = TagStream("abc-1", "abc", "1", False)
    tag.attach(Stream())  # type: ignore[arg-type]
    program = TagProgram("abc-1", [(0.0, utterance(CLIPS[1]))])
    messages = [parse_media(parse_message(str(text))) for _, text in media_messages([program])]
    late = 0
    for packet in messages + messages:  # the second pass starts its timestamps again
        try:
            tag.receive(packet)
        except Rejected as problem:
            assert problem.reason == "late"
            late += 1
    tag.flush()
    assert late == 24  # then the new clock is followed
    starts = [at for at, _ in pushed]
    assert starts == sorted(starts)
    heard = sum(n for _, n in pushed) / 16000
    sent = 2 * len(messages) * 0.02
    assert sent - 0.6 < heard < sent + 0.1, (heard, sent)


def test_ogg_pages_split_anywhere() -> None:
    stream = ogg_opus(utterance(CLIPS[1]))
    whole = OggOpusPackets().feed(stream)
    assert len(whole) > 100
    split = OggOpusPackets()
    pieces = [split.feed(stream[i : i + 777]) for i in range(0, len(stream), 777)]
    assert [p for piece in pieces for p in piece] == whole
    with pytest.raises(Rejected) as bad:
        OggOpusPackets().feed(b"this is not an ogg page at all, really not")
    assert bad.value.reason == "bad_ogg"


def ogg_opus(samples: np.ndarray) -> bytes:
    """16 kHz speech as an Ogg Opus stream (PyAV's muxer)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(piece))  # type: ignore[attr-defined]
        container.mux(stream.encode(None))  # type: ignore[attr-defined]
    return buffer.getvalue()


def ogg_pages(data: bytes) -> list[bytes]:
    starts = [m.start() for m in re.finditer(b"OggS", data)]
    return [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]


# --- against the service -------------------------------------------------------------------


async def test_three_participants_in_real_time(nats_url: str, tmp_path: Path) -> None:
    programs, spoken = three_tags()
    messages = media_messages(programs)
    async with listen_server(nats_url, tmp_path, postcall={"run_worker": True}) as server:
        on_nats: list[CaptionFrame] = []

        async def collect(msg: Msg) -> None:
            frame = parse_frame(msg.data)
            if isinstance(frame, CaptionFrame):
                on_nats.append(frame)

        await server.nc.subscribe(server.runtime.subjects.room_captions("conf-1"), cb=collect)
        target = url(server, "conf-1", sendBack="true", sendBackInterim="true", lang="en-US")
        got = await replay(target, messages, realtime=True, linger_s=4.0)

        assert got.close_code == 1000
        assert {"event": "pong", "id": 1} in got.others
        assert got.participants() == sorted(spoken)
        for result in got.results:
            assert result["participant"]["tag"].startswith(result["participant"]["id"] + "-")
            assert result["participant"]["ssrc"] == result["participant"]["tag"].split("-")[1]
            assert result["language"] == "en" and result["timestamp"] > 1.6e12
            assert result["event"] == result["type"] == "transcription-result"
        for who in spoken:
            assert got.finals(who), who
        # interims (how many depends on the decode load) revise a segment its final closes
        assert got.interims()
        final_ids = {r["message_id"] for r in got.finals()}
        order = [(r["message_id"], r["is_interim"], r["participant"]["id"]) for r in got.results]
        for at, (segment, interim, who) in enumerate(order):
            if interim:
                assert (segment, False, who) in order[at + 1 :], (segment, who)
        assert all(0 < r["transcript"][0]["confidence"] <= 1 for r in got.finals())
        assert_captions(spoken, heard(got, spoken))

        await server.nc.flush()
        await asyncio.sleep(0.5)
        nats_finals = [f for f in on_nats if f.type == "final" and f.text.strip()]
        assert {f.participant for f in nats_finals} == set(spoken)
        assert {f.segment_id for f in nats_finals} == final_ids

        body = await one_job(server)
        assert body["status"] == "completed", body
        transcript = body["transcript"]
        assert {s["id"] for s in transcript["speakers"]} == set(spoken)
        for who, text in spoken.items():
            said = " ".join(s["text"] for s in transcript["segments"] if s["speaker"] == who)
            assert wer(text, said) <= 0.3, (who, said)


async def test_as_fast_as_possible(nats_url: str, tmp_path: Path) -> None:
    programs, spoken = three_tags()
    async with listen_server(nats_url, tmp_path) as server:
        target = url(server, "fast", sendBack="true")
        got = await replay(target, media_messages(programs), realtime=False, linger_s=10.0)
        assert got.close_code == 1000
        assert not got.interims()  # sendBackInterim not asked for
        assert_captions(spoken, heard(got, spoken))
        assert not any((await rejected_counts(server)).values())


async def test_bad_input_is_counted_and_the_rest_goes_on(
    nats_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api.compat.jitsi")
    programs = [
        TagProgram("aaaa1111-1", [(0.2, utterance(CLIPS[0]))]),
        TagProgram("bbbb2222-2", [(0.5, utterance(CLIPS[3]))]),
    ]
    spoken = {"aaaa1111": reference(0), "bbbb2222": reference(3)}
    messages: list[Timed] = list(media_messages(programs))
    media = [(i, json.loads(text)) for i, (_, text) in enumerate(messages)]
    b_packets = [i for i, m in media if m["media"]["tag"] == "bbbb2222-2"]
    a_packets = [i for i, m in media if m["media"]["tag"] == "aaaa1111-1"]
    # B: two neighbours swapped (put back in order), one packet ten places late (dropped)
    i, j = b_packets[100], b_packets[101]
    messages[i], messages[j] = messages[j], messages[i]
    late = messages.pop(b_packets[60])
    messages.insert(b_packets[70], late)
    # A: one packet sent twice, one packet whose payload is not Opus
    messages.insert(a_packets[50] + 1, messages[a_packets[50]])
    broken = json.loads(str(messages[a_packets[80]][1]))
    broken["media"]["payload"] = base64.b64encode(b"\xff\xff\xff\xff").decode()
    messages[a_packets[80]] = (messages[a_packets[80]][0], json.dumps(broken))
    bad: list[str | bytes] = [
        "{this is not json",
        '{"event": "dance"}',
        '{"event": "media", "media": {"chunk": 1, "payload": "AAAA"}}',
        '{"event": "media", "media": {"tag": "aaaa1111-1", "payload": "%%%%"}}',
        b"\x00\x01binary",
        '{"event": "start", "start": {"tag": "dddd-4", "mediaFormat": {"encoding": "l16"}}}',
        '{"event": "media", "media": {"tag": "dddd-4", "chunk": 1, "payload": "AAAA"}}',
    ]
    for n, frame in enumerate(bad):
        at = 30 + n * 40
        messages.insert(at, (messages[at][0], frame))
    async with listen_server(nats_url, tmp_path) as server:
        got = await replay(
            url(server, "rough", sendBack="true"), messages, realtime=False, linger_s=10.0
        )
        assert got.close_code == 1000
        assert {"event": "pong", "id": 1} in got.others  # the socket went on to the end
        assert_captions(spoken, heard(got, spoken))
        counts = await rejected_counts(server)
    expected = {
        "malformed_json": 1,
        "unknown_event": 1,
        "invalid_media": 1,
        "bad_base64": 1,
        "binary_frame": 1,
        "unsupported_encoding": 1,  # at start; its media is dropped quietly
        "duplicate": 1,
        "late": 1,
        "undecodable_opus": 1,
    }
    assert {k: v for k, v in counts.items() if v} == expected
    logged = " ".join(r.getMessage() for r in caplog.records)
    for reason in expected:
        assert f"{reason} dropped" in logged, reason


async def test_ogg_opus_pages(nats_url: str, tmp_path: Path) -> None:
    pages = ogg_opus(utterance(CLIPS[0]))
    messages: list[Timed] = [
        (
            n * 0.02,
            json.dumps(
                {
                    "event": "media",
                    "media": {
                        "tag": "eeee5555-5",
                        "chunk": n,
                        "timestamp": 0,
                        "payload": base64.b64encode(page).decode(),
                    },
                }
            ),
        )
        for n, page in enumerate(ogg_pages(pages))
    ]
    async with listen_server(nats_url, tmp_path) as server:
        target = url(server, "ogg", sendBack="true", encoding="ogg-opus")
        got = await replay(target, messages, realtime=False, linger_s=8.0)
        assert got.close_code == 1000
        assert_captions({"eeee5555": reference(0)}, {"eeee5555": got.text("eeee5555")})
        assert not any((await rejected_counts(server)).values())


async def test_dump_replay_command(nats_url: str, tmp_path: Path) -> None:
    programs = [TagProgram("ffff6666-6", [(0.2, utterance(CLIPS[2]))], numbers_as_strings=True)]
    dump = tmp_path / "media.jsonl"
    # the bridge announces each tag first; its endpointId names the participant
    start = {
        "event": "start",
        "start": {
            "tag": "ffff6666-6",
            "mediaFormat": {"encoding": "opus", "sampleRate": 48000, "channels": 2},
            "customParameters": {"endpointId": "reader"},
        },
    }
    write_dump(dump, [(0.0, json.dumps(start)), *media_messages(programs)])
    assert len(read_dump(dump)) == len(media_messages(programs)) + 1
    async with listen_server(nats_url, tmp_path / "data") as server:
        target = url(server, "dumped", sendBack="true")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "roomscribe",
            "jitsi",
            "replay",
            str(dump),
            "--url",
            target,
            "--speed",
            "max",
            "--linger",
            "8",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    summary = lines[-1]["summary"]
    assert summary["close_code"] == 1000 and summary["sent"] == len(read_dump(dump))
    assert list(summary["participants"]) == ["reader"], summary
    assert wer(reference(2), summary["participants"]["reader"]) <= 0.3, summary
    assert all(line["type"] == "transcription-result" for line in lines[:-1])


async def test_auth_and_refused_connections(nats_url: str, tmp_path: Path) -> None:
    async def pong(target: str, headers: dict[str, str] | None = None) -> int | None:
        try:
            async with connect(target, additional_headers=headers) as ws:
                await ws.send('{"event": "ping", "id": 7}')
                reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert reply == {"event": "pong", "id": 7}
                return None
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code

    async with listen_server(nats_url, tmp_path, api={"api_keys": ["key-1"]}) as server:
        assert await pong(url(server, "a")) == 4001
        assert await pong(url(server, "a", token="wrong")) == 4001
        assert await pong(url(server, "a"), {"Authorization": "Bearer wrong"}) == 4001
        assert await pong(url(server, "a"), {"Authorization": "Bearer key-1"}) is None
        assert await pong(url(server, "a", token="key-1")) is None
        async with httpx.AsyncClient(base_url=server.http_url) as client:
            issued = await client.post(
                "/v1/listen/token", headers={"Authorization": "Bearer key-1"}
            )
        assert await pong(url(server, "a", token=issued.json()["token"])) is None
        assert await pong(f"ws://127.0.0.1:{server.port}/transcribe?token=key-1") == 1008
        assert await pong(url(server, "a", token="key-1", encoding="mp3")) == 1008


async def test_a_newer_socket_takes_the_room_and_silence_ends_it(
    nats_url: str, tmp_path: Path
) -> None:
    async with listen_server(nats_url, tmp_path, limits={"idle_timeout_s": 1.5}) as server:
        target = url(server, "room-7", sendBack="true")
        async with connect(target) as first:
            await first.send('{"event": "ping", "id": 1}')
            assert json.loads(await first.recv()) == {"event": "pong", "id": 1}
            async with connect(target) as second:
                await second.send('{"event": "ping", "id": 2}')
                assert json.loads(await second.recv()) == {"event": "pong", "id": 2}
                with pytest.raises(ConnectionClosed) as replaced:
                    await asyncio.wait_for(first.recv(), 5)
                assert replaced.value.rcvd is not None and replaced.value.rcvd.code == 1000
                assert "newer connection" in replaced.value.rcvd.reason
                # nothing sent: the idle timeout ends the call and closes the socket
                with pytest.raises(ConnectionClosed) as idle:
                    await asyncio.wait_for(second.recv(), 10)
                assert idle.value.rcvd is not None and idle.value.rcvd.code == 4003


async def test_nats_only_and_a_tag_past_capacity(nats_url: str, tmp_path: Path) -> None:
    programs = [
        TagProgram("aaaa1111-1", [(0.2, utterance(CLIPS[1]))]),
        TagProgram("bbbb2222-2", [(0.4, utterance(CLIPS[4]))]),
    ]
    async with listen_server(nats_url, tmp_path, limits={"max_streams": 1}) as server:
        on_nats: list[CaptionFrame] = []

        async def collect(msg: Msg) -> None:
            frame = parse_frame(msg.data)
            if isinstance(frame, CaptionFrame) and frame.type == "final":
                on_nats.append(frame)

        await server.nc.subscribe(server.runtime.subjects.room_captions("quiet"), cb=collect)
        # neither sendBack nor sendBackInterim: captions go to NATS only
        got = await replay(url(server, "quiet"), media_messages(programs), realtime=False)
        assert got.close_code == 1000 and not got.results
        await eventually(lambda: bool(on_nats), 30)
        assert {f.participant for f in on_nats} == {"aaaa1111"}
        assert wer(reference(1), " ".join(f.text for f in on_nats)) <= 0.3
        counts = await rejected_counts(server)
    assert counts["capacity"] == 1  # once per limits.retry_after_s, not per packet
    assert {k for k, v in counts.items() if v} == {"capacity"}
