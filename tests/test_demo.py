"""`roomscribe demo` end to end: a real three-person WebRTC call, captions, post-call, exports."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import srt
import webvtt

from roomscribe.demo import LIBRIVOX
from tests.conftest import free_port

NAMES = ("Alice", "Bob", "Carol")


@pytest.mark.timeout(300)
def test_demo_runs_a_call_and_writes_exports(tmp_path: Path) -> None:
    if not LIBRIVOX.is_dir():
        pytest.skip("Debian package pocketsphinx-testdata is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "roomscribe", "demo", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    live, _, after = done.stdout.partition("== Post-call transcript ==")
    for name in NAMES:
        assert f"] {name}: " in live, live
    transcript, _, rest = after.partition("== Summary ==")
    for name in NAMES:
        assert f"] {name}: " in transcript, transcript
    assert "Summary:" in rest and "Topics:" in rest
    if shutil.which("espeak-ng"):
        assert "(owner: Carol)" in rest, rest
    exports = sorted((tmp_path / "exports").iterdir())
    assert [p.suffix for p in exports] == [".json", ".srt", ".txt", ".vtt"]
    for path in exports:
        assert str(path) in done.stdout
    data = json.loads(exports[0].read_text())
    assert {s["name"] for s in data["speakers"]} == set(NAMES)
    subtitles = list(srt.parse(exports[1].read_text()))
    assert len(subtitles) >= 5
    captions = webvtt.read(str(exports[3]))
    assert len(captions) >= 5
    assert all(name in exports[2].read_text() for name in NAMES)


def test_demo_against_a_url_needs_a_reachable_nats(tmp_path: Path) -> None:
    if not LIBRIVOX.is_dir():
        pytest.skip("Debian package pocketsphinx-testdata is not installed")
    demo = [sys.executable, "-m", "roomscribe", "demo", "--data-dir", str(tmp_path)]
    demo += ["--url", f"http://127.0.0.1:{free_port()}"]
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    done = subprocess.run(demo, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "error [MISSING_NATS]" in done.stderr
    dead = f"nats://127.0.0.1:{free_port()}"
    done = subprocess.run([*demo, "--nats", dead], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error [UNREACHABLE]: "), done.stderr


def test_demo_without_the_speech_package_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from roomscribe import cli, demo

    monkeypatch.setattr(demo, "LIBRIVOX", tmp_path / "absent")
    assert cli.main(["demo", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error [MISSING_PACKAGE]" in err and "pocketsphinx-testdata" in err, err
    assert not (tmp_path / "nats").exists()
