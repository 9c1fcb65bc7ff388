"""A worker process killed mid-job: the record says it is retried, the job is redelivered and
completes exactly once."""

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import nats
import numpy as np

from pipeline.jobs import JobKind, JobRecord, JobSource, JobState, JobStore, new_job_id, wait_for
from pipeline.webhooks import Notifier
from pipeline.worker import STALE_S, SWEEP_S
from protocol.webhooks import SIGNATURE_HEADER, verify
from tests.api_helpers import wer
from tests.conftest import librivox_files, librivox_reference, read_wav16
from tests.webhook_receiver import webhook_receiver

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "rs-kill"


def _wav_bytes(samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(samples.tobytes())
    return out.getvalue()


def _start_worker(nats_url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "ROOMSCRIBE_DATA_DIR": str(data_dir),
        "ROOMSCRIBE_NATS__SUBJECT_PREFIX": PREFIX,
        "ROOMSCRIBE_POSTCALL__BATCH_MODEL": "whisper-tiny.en",
        "ROOMSCRIBE_POSTCALL__JOB_ACK_WAIT_S": "30",
        "ROOMSCRIBE_POSTCALL__WEBHOOK_SECRET": "kill-secret",
        "ROOMSCRIBE_API__ALLOW_PRIVATE_URLS": "true",  # the webhook receiver is on loopback
    }
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.worker"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def test_killed_worker_job_completes_once(nats_url: str, tmp_path: Path) -> None:
    files = librivox_files()
    refs = librivox_reference()
    audio = np.concatenate([read_wav16(path) for path in files])
    reference = " ".join(refs[path.stem] for path in files)
    nc = await nats.connect(nats_url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        store = await JobStore.open(nc, PREFIX)
        notifier = await Notifier.open(nc, PREFIX)
        with webhook_receiver() as receiver:
            now = time.time()
            record = JobRecord(
                id=new_job_id(now), kind=JobKind.BATCH, created_at=now, updated_at=now,
                source=JobSource(type="upload", filename="all.wav"), webhook_url=receiver.url,
            )  # fmt: skip
            await store.submit(record, _wav_bytes(audio))

            workers.append(_start_worker(nats_url, tmp_path))
            async with asyncio.timeout(60):
                while (await store.get(record.id)).status != JobState.PROCESSING:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(10)
            interrupted = await store.get(record.id)
            assert interrupted.status == JobState.PROCESSING
            assert interrupted.attempts == 1

            workers.append(_start_worker(nats_url, tmp_path))
            # the new worker's sweep finds the dead one's record before the redelivery
            async with asyncio.timeout(STALE_S + SWEEP_S + 10):
                while (await store.get(record.id)).status != JobState.QUEUED:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
            retrying = await store.get(record.id)
            assert retrying.message == "retrying: attempt 1 was interrupted"
            done = await wait_for(store, record.id, limit_s=120)
            assert done.status == JobState.COMPLETED, done.error
            assert done.attempts == 2
            assert done.progress == 100

            (hit,) = await asyncio.to_thread(receiver.wait_for, 1)
            await asyncio.sleep(2.0)  # room for a duplicate to show up
            assert len(receiver.received) == 1
            assert verify("kill-secret", hit.body, hit.headers[SIGNATURE_HEADER])
            event = json.loads(hit.body)
            assert (event["type"], event["data"]["id"]) == ("transcript.done", record.id)

        transcript = await store.get_transcript(record.id)
        assert wer(reference, " ".join(s.text for s in transcript.segments)) <= 0.15
        assert sorted(await store.file_names(record.id)) == [
            "audio", "transcript.json", "transcript.srt", "transcript.txt", "transcript.vtt",
        ]  # fmt: skip
        (delivery,) = await notifier.deliveries(record.id)
        assert (delivery.status, len(delivery.attempts)) == ("delivered", 1)
        stream = await nc.jetstream().stream_info(store.stream)
        assert stream.state.messages == 0  # acknowledged, gone from the work queue

        workers[1].send_signal(signal.SIGTERM)
        assert workers[1].wait(20) == 0
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await nc.close()
