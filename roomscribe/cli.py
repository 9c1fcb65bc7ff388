"""The `roomscribe` command."""

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from config import Settings, load_settings

log = logging.getLogger("roomscribe")


class CliError(Exception):
    """A user-facing failure: printed as `error [CODE]: message`, exit status 2."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "nats", None):
        overrides["nats"] = {"url": args.nats}
    return load_settings(Path(args.config) if args.config else None, **overrides)


def _cmd_schema(args: argparse.Namespace) -> None:
    from protocol.schema import wire_schemas

    print(json.dumps(wire_schemas(), indent=2))


def _cmd_live(args: argparse.Namespace) -> None:
    from roomscribe.live_files import run_live_files

    names = args.names.split(",") if args.names else []
    settings = _settings(args)
    asyncio.run(
        run_live_files(
            settings,
            [Path(f) for f in args.files],
            names,
            args.room,
            args.speed,
            publish=bool(args.nats),
        )
    )


def _cmd_transcribe(args: argparse.Namespace) -> None:
    from roomscribe.transcribe_file import transcribe_file

    settings = _settings(args)
    print(
        transcribe_file(
            settings, Path(args.file), args.model or settings.live.model, args.format, args.language
        )
    )


def _cmd_models(args: argparse.Namespace) -> None:
    from engines import models

    settings = _settings(args)
    if args.models_command == "list":
        rows = models.list_models(settings.data_dir)
        print(f"{'NAME':48} {'KIND':22} {'SIZE':>9}  PRESENT")
        for row in rows:
            size = f"{row.size_bytes / 1e6:.1f} MB" if row.size_bytes else "-"
            print(f"{row.name:48} {row.kind:22} {size:>9}  {'yes' if row.present else 'no'}")
    elif args.models_command == "pull" and args.name == "diarization":
        from engines.diarization_models import pull_diarization

        path = pull_diarization(_diarization_dir(args), base_url=args.base_url)
        print(f"diarization models ready in {path}")
    elif args.models_command == "pull":
        pulled = models.pull(args.name, settings.data_dir, base_url=args.base_url)
        print(f"{pulled.name}: {pulled.kind} at {pulled.path} ({pulled.size_bytes / 1e6:.1f} MB)")
    elif args.models_command == "prepare":
        from engines.diarization_export import prepare_diarization

        path = prepare_diarization(_diarization_dir(args))
        print(f"diarization models ready in {path}")


def _diarization_dir(args: argparse.Namespace) -> Path:
    from engines.diarization import default_model_dir
    from engines.diarization_models import installed_model_dir

    return installed_model_dir() if args.installed else default_model_dir(_settings(args).data_dir)


def _cmd_serve(args: argparse.Namespace) -> None:
    from roomscribe.service import serve

    asyncio.run(serve(_settings(args)))


def _cmd_worker(args: argparse.Namespace) -> None:
    from roomscribe.service import run_worker

    asyncio.run(run_worker(_settings(args)))


def _cmd_join(args: argparse.Namespace) -> None:
    from roomscribe.service import join_janus

    asyncio.run(join_janus(_settings(args), args.url, args.room))


def _cmd_demo(args: argparse.Namespace) -> None:
    from roomscribe.demo import DemoError, demo_participants, run_demo

    try:
        asyncio.run(run_demo(_settings(args), demo_participants(), args.url, args.nats))
    except DemoError as exc:
        raise CliError(exc.code, str(exc)) from exc


def _cmd_jitsi(args: argparse.Namespace) -> None:
    from roomscribe.jvb_replay import read_dump, replay

    try:
        messages = read_dump(Path(args.file))
    except (OSError, ValueError) as exc:
        raise CliError("INVALID_REQUEST", str(exc)) from exc
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    got = asyncio.run(
        replay(
            args.url,
            messages,
            realtime=args.speed == "1",
            linger_s=args.linger,
            headers=headers,
        )
    )
    for result in got.results:
        if args.interim or not result["is_interim"]:
            print(json.dumps(result), flush=True)
    summary = {
        "sent": got.sent,
        "send_s": round(got.send_s, 2),
        "close_code": got.close_code,
        "finals": len(got.finals()),
        "interims": len(got.interims()),
        "participants": {who: got.text(who) for who in got.participants()},
    }
    print(json.dumps({"summary": summary}), flush=True)


def _cmd_bench(args: argparse.Namespace) -> None:
    if args.bench_command == "live":
        from bench.live import main as bench_live

        bench_live(args.participants, args.talkers, args.seconds, args.out)
    elif args.bench_command == "bridge":
        from bench.bridge import main as bench_bridge

        bench_bridge(
            args.tracks,
            args.talkers,
            args.seconds,
            args.warmup,
            args.out,
            args.dtx,
            tuple(args.modes),
        )
    elif args.bench_command == "jitsi":
        from bench.jitsi import main as bench_jitsi

        bench_jitsi(
            args.tracks, args.talking, args.seconds, args.warmup, args.out, not args.no_webrtc
        )
    elif args.bench_command == "accuracy":
        from bench.accuracy import main as bench_accuracy

        bench_accuracy(args.sets, args.out, args.final_model, args.live_only, args.offline_only)
    else:
        from bench.batch import main as bench_batch

        bench_batch(args.minutes, args.out)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", help="TOML settings file (default: $ROOMSCRIBE_CONFIG, then built-in defaults)"
    )
    common.add_argument(
        "--data-dir", help="where recordings, models, jobs and the embedded NATS store live"
    )
    common.add_argument("-v", "--verbose", action="store_true")
    parser = argparse.ArgumentParser(prog="roomscribe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    live = sub.add_parser(
        "live",
        parents=[common],
        help="run the live pipeline over audio files, one participant per file",
    )
    live.add_argument("files", nargs="+")
    live.add_argument("--names", help="display names, comma separated, in file order")
    live.add_argument("--room", default="room")
    live.add_argument("--speed", choices=["1", "max"], default="max")
    live.add_argument("--nats", help="also publish frames to this NATS server")
    live.set_defaults(func=_cmd_live)

    transcribe = sub.add_parser(
        "transcribe", parents=[common], help="transcribe one file in a batch pass"
    )
    transcribe.add_argument("file")
    transcribe.add_argument("--model")
    transcribe.add_argument("--language")
    transcribe.add_argument("--format", choices=["json", "srt", "vtt", "txt"], default="txt")
    transcribe.set_defaults(func=_cmd_transcribe)

    models = sub.add_parser("models", parents=[common], help="list, download or prepare models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", parents=[common])
    installed = argparse.ArgumentParser(add_help=False)
    installed.add_argument(
        "--installed",
        action="store_true",
        help="diarization: into this Python environment, shared by every data dir",
    )
    pull = models_sub.add_parser("pull", parents=[common, installed])
    pull.add_argument("name", help="a catalog name, an archive URL, or diarization")
    pull.add_argument("--base-url", help="mirror of the release downloads")
    prepare = models_sub.add_parser("prepare", parents=[common, installed])
    prepare.add_argument("what", choices=["diarization"])
    models.set_defaults(func=_cmd_models)

    sub.add_parser(
        "schema", parents=[common], help="print the JSON Schema of every frame"
    ).set_defaults(func=_cmd_schema)

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the service (HTTP API, WebRTC bridge, live captions, worker)",
    )
    serve.add_argument(
        "--nats", help="NATS server URL (default: $NATS_URL, else an embedded server)"
    )
    serve.set_defaults(func=_cmd_serve)

    worker = sub.add_parser("worker", parents=[common], help="run a post-call / batch job worker")
    worker.add_argument("--nats")
    worker.set_defaults(func=_cmd_worker)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="a simulated three-person call over WebRTC: live captions, then post-call",
    )
    demo.add_argument("--url", help="use the service running here instead of starting one")
    demo.add_argument("--nats", help="NATS server of the service at --url (default: $NATS_URL)")
    demo.set_defaults(func=_cmd_demo)

    join = sub.add_parser("join", parents=[common], help="join an SFU room as the caption bot")
    join_sub = join.add_subparsers(dest="sfu", required=True)
    janus = join_sub.add_parser("janus", parents=[common])
    janus.add_argument("--url", required=True, help="Janus HTTP API, e.g. http://HOST:8088/janus")
    janus.add_argument("--room", required=True, type=int)
    janus.add_argument("--nats")
    join.set_defaults(func=_cmd_join)

    jitsi = sub.add_parser("jitsi", parents=[common], help="Jitsi Videobridge tools")
    jitsi_sub = jitsi.add_subparsers(dest="jitsi_command", required=True)
    jitsi_replay = jitsi_sub.add_parser(
        "replay",
        parents=[common],
        help="play a media.jsonl dump (opus-transcriber-proxy format) to a /transcribe socket",
    )
    jitsi_replay.add_argument("file", help="media.jsonl: one {timestamp, direction, data} a line")
    jitsi_replay.add_argument(
        "--url",
        required=True,
        help="e.g. ws://HOST:8000/transcribe?sessionId=test&sendBack=true&sendBackInterim=true",
    )
    jitsi_replay.add_argument("--speed", choices=["1", "max"], default="1")
    jitsi_replay.add_argument("--token", help="API key, sent as a bearer token")
    jitsi_replay.add_argument(
        "--linger", type=float, default=5.0, help="seconds without results before closing"
    )
    jitsi_replay.add_argument("--interim", action="store_true", help="print interim results too")
    jitsi.set_defaults(func=_cmd_jitsi)

    bench = sub.add_parser(
        "bench", parents=[common], help="benchmarks (numbers go to BENCHMARKS.md)"
    )
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bench_live = bench_sub.add_parser("live", parents=[common])
    bench_live.add_argument("--participants", type=int, nargs="+", default=[5, 10, 20, 40])
    bench_live.add_argument("--talkers", type=int, default=3)
    bench_live.add_argument("--seconds", type=float, default=60.0)
    bench_live.add_argument("--out", help="write the results as JSON here")
    bench_bridge = bench_sub.add_parser("bridge", parents=[common])
    bench_bridge.add_argument("--tracks", type=int, nargs="+", default=[10, 25, 50])
    bench_bridge.add_argument("--talkers", type=int, default=3)
    bench_bridge.add_argument("--seconds", type=float, default=20.0, help="measured window")
    bench_bridge.add_argument("--warmup", type=float, default=5.0)
    bench_bridge.add_argument(
        "--dtx", action="store_true", help="silent tracks send as Opus DTX senders do"
    )
    bench_bridge.add_argument(
        "--modes",
        nargs="+",
        choices=["bot", "bot-threads", "bot-aiortc-decoder", "bare"],
        default=["bot", "bare"],
        help="bot: as serve runs (recognition process); bot-threads: recognition in threads; "
        "bot-aiortc-decoder: aiortc's decoder thread per track",
    )
    bench_bridge.add_argument("--out", help="write the results as JSON here")
    bench_jitsi = bench_sub.add_parser(
        "jitsi", parents=[common], help="tagged Opus streams on WS /transcribe beside WebRTC"
    )
    bench_jitsi.add_argument("--tracks", type=int, nargs="+", default=[6, 12, 24])
    bench_jitsi.add_argument("--talking", type=int, default=3)
    bench_jitsi.add_argument("--seconds", type=float, default=20.0, help="measured window")
    bench_jitsi.add_argument("--warmup", type=float, default=5.0)
    bench_jitsi.add_argument("--no-webrtc", action="store_true", help="skip the bridge's runs")
    bench_jitsi.add_argument("--out", help="write the results as JSON here")
    bench_batch = bench_sub.add_parser("batch", parents=[common])
    bench_batch.add_argument("--minutes", type=float, default=10.0)
    bench_batch.add_argument("--out")
    bench_accuracy = bench_sub.add_parser(
        "accuracy", parents=[common], help="every path beside plain faster-whisper on dev sets"
    )
    bench_accuracy.add_argument(
        "--sets",
        nargs="+",
        choices=["librivox", "pyannote", "meeting3", "meeting4"],
        default=["librivox", "pyannote", "meeting3", "meeting4"],
    )
    bench_accuracy.add_argument("--out", help="write the results as JSON here")
    bench_accuracy.add_argument(
        "--final-model", help="live finals from this model (two-pass live), e.g. whisper-base"
    )
    bench_accuracy.add_argument(
        "--live-only",
        action="store_true",
        help="plain tiny.en and the live rows only (no post-call or batch)",
    )
    bench_accuracy.add_argument(
        "--offline-only",
        action="store_true",
        help="the plain, post-call and batch rows only (no live)",
    )
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from engines.base import EngineError
    from pipeline.audio_io import AudioDecodeError

    try:
        args.func(args)
    except CliError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except AudioDecodeError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except EngineError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
