"""German, French and Spanish speech from espeak-ng with known text, and a WER that keeps
accented letters (the English normalisation of :mod:`bench.scoring` drops them).

Run ``python -m bench.languages`` for the table in BENCHMARKS.md: plain faster-whisper base
beside roomscribe's live engine and batch pass on the same audio.
"""

import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass

import jiwer
import numpy as np

from bench.voices import espeak
from pipeline.audio_io import SAMPLE_RATE

SENTENCES: dict[str, tuple[str, ...]] = {
    "de": (
        "Guten Morgen, wir beginnen heute mit dem Bericht über das neue Projekt.",
        "Die Kollegen aus Berlin haben die Zahlen gestern geschickt.",
        "Können wir die Besprechung auf nächsten Dienstag verschieben?",
        "Ich schreibe die Zusammenfassung und schicke sie allen.",
    ),
    "fr": (
        "Bonjour à tous, nous commençons la réunion avec le budget de cette année.",
        "L'équipe de Paris a terminé les tests la semaine dernière.",
        "Pouvons-nous déplacer la date de livraison à vendredi prochain?",
        "Je vais envoyer le compte rendu après la réunion.",
    ),
    "es": (
        "Buenos días a todos, empezamos la reunión con el presupuesto del proyecto.",
        "El equipo de Madrid terminó las pruebas la semana pasada.",
        "¿Podemos mover la fecha de entrega al próximo viernes?",
        "Voy a enviar el resumen a todos después de la llamada.",
    ),
}
PAUSE_S = 0.8


@dataclass(frozen=True)
class Speech:
    language: str
    text: str
    samples: np.ndarray  # 16 kHz int16


def speech(language: str) -> Speech:
    """The language's sentences spoken by its espeak-ng voice, 0.8 s apart."""
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype=np.int16)
    parts = [pause]
    for sentence in SENTENCES[language]:
        parts += [espeak(language, sentence, speed=150), pause]
    return Speech(language, " ".join(SENTENCES[language]), np.concatenate(parts))


def normalize_words(text: str) -> str:
    """Lower case, letters and apostrophes only, accents kept; "l'équipe" is two words."""
    text = unicodedata.normalize("NFC", text).casefold().replace("’", "'")
    text = re.sub(r"(\w)'(\w)", r"\1 \2", text)
    text = "".join(c if c.isalpha() else " " for c in text)
    return re.sub(r"\s+", " ", text).strip()


def word_error_rate(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize_words(reference), normalize_words(hypothesis) or "-"))


def main() -> None:
    from faster_whisper import WhisperModel

    from config import load_settings
    from engines.factory import load_engine
    from engines.models import resolve
    from engines.whisper_batch import WhisperBatch

    settings = load_settings()
    base = resolve("whisper-base", settings.data_dir)
    plain = WhisperModel(str(base.path), device="cpu", compute_type="int8")
    live = load_engine("whisper-base", settings, multilingual=True)
    batch = WhisperBatch("whisper-base", base.path)
    tiny = WhisperModel(
        str(resolve("whisper-tiny.en", settings.data_dir).path), device="cpu", compute_type="int8"
    )
    print("| language | audio s | path | WER, language given | auto: detected (WER) | wall s |")
    print("|---|---|---|---|---|---|")
    for language in SENTENCES:
        clip = speech(language)
        audio = clip.samples.astype(np.float32) / 32768.0
        seconds = audio.size / SAMPLE_RATE

        def plain_run(given: str | None, audio: np.ndarray = audio) -> tuple[str, str]:
            pieces, info = plain.transcribe(audio, beam_size=5, vad_filter=True, language=given)
            return " ".join(p.text for p in pieces), info.language

        def live_run(given: str | None, audio: np.ndarray = audio) -> tuple[str, str]:
            finals = live.transcribe(audio, given)
            found = Counter(h.language or "?" for h in finals if h.text.strip())
            return " ".join(h.text for h in finals), ", ".join(
                f"{code} x{n}" for code, n in found.most_common()
            )

        def batch_run(given: str | None, audio: np.ndarray = audio) -> tuple[str, str]:
            result = batch.transcribe(audio, language=given)
            return " ".join(s.text for s in result.segments), result.language or ""

        def tiny_run(given: str | None, audio: np.ndarray = audio) -> tuple[str, str]:
            pieces, _ = tiny.transcribe(audio, beam_size=5, vad_filter=True)
            return " ".join(p.text for p in pieces), "en"

        runs = (
            ("plain faster-whisper tiny.en", tiny_run),
            ("plain faster-whisper base", plain_run),
            ("roomscribe live engine", live_run),
            ("roomscribe batch", batch_run),
        )
        for path, run in runs:
            started = time.perf_counter()
            given_text, _ = run(language)
            auto_text, detected = run(None)
            wall = time.perf_counter() - started
            print(
                f"| {language} | {seconds:.1f} | {path} | "
                f"{word_error_rate(clip.text, given_text):.1%} | "
                f"{detected} ({word_error_rate(clip.text, auto_text):.1%}) | {wall:.1f} |"
            )


if __name__ == "__main__":
    main()
