"""Schemathesis against the served app (every route, ``--checks all``), keys unset and set:
no 5xx, no response the OpenAPI document does not describe."""

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.api_helpers import make_settings
from tests.service_helpers import served

pytest.importorskip("schemathesis")

KEY = "fuzz-key"
HERE = Path(__file__).parent


@pytest.mark.timeout(600)
@pytest.mark.parametrize("keys", [[], [KEY]], ids=["keys-unset", "keys-set"])
async def test_openapi_fuzzed_clean(nats_url: str, tmp_path: Path, keys: list[str]) -> None:
    settings = make_settings(
        nats_url,
        tmp_path,
        # the worker runs, as under serve: the OpenAI route waits for its job's answer
        api={"api_keys": keys, "allow_private_urls": False, "sync_wait_s": 60.0},
        postcall={"run_worker": True},
    )
    async with served(settings) as service:
        headers = ["-H", f"Authorization: Bearer {KEY}"] if keys else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{service.http_url}/openapi.json",
            *headers,
            "--checks",
            "all",
            "--max-examples",
            os.environ.get("ROOMSCRIBE_FUZZ_EXAMPLES", "25"),
            "--max-time",
            os.environ.get("ROOMSCRIBE_FUZZ_SECONDS", "120"),
            "--seed",
            "1",
            "--request-timeout",
            "20",
            "--workers",
            "1",
            "--warnings",
            "off",
            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"},
            cwd=HERE.parent,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
    report = output.decode(errors="replace")
    print(report)
    assert proc.returncode == 0, report[-12000:]
