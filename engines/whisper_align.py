"""Word timings for Whisper text: the clip encoded at its own length, then cross-attention
alignment of the text's tokens (faster-whisper's ``find_alignment``) on that encoder output.

Whisper pads every input to a 30 s window; CTranslate2's encoder takes shorter inputs, so a
clip is encoded as it is plus one second of silence, a fifth to a tenth of the padded cost.
"""

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import merge_punctuations

from engines.base import RecognizedWord

PREPEND = "\"'“¿([{-"
APPEND = "\"'.。,，!！?？:：”)]}、"


def encode(model: WhisperModel, samples: np.ndarray) -> tuple[ctranslate2.StorageView, int]:
    """The clip's encoder output and its length in feature frames."""
    features = model.feature_extractor(samples)
    content = features.shape[-1]
    frames = min(3000, int(np.ceil((content + 100) / 100) * 100))
    window = np.zeros((features.shape[0], frames), np.float32)
    window[:, : min(frames, content)] = features[:, :frames]
    encoded = model.model.encode(ctranslate2.StorageView.from_array(window[None]), to_cpu=False)
    return encoded, content


def join_word_pieces(alignment: list[dict]) -> list[dict]:
    """Whisper splits "cold-hearted" into "cold" + "-hearted": a piece without a leading space
    continues the word before it."""
    words: list[dict] = []
    for piece in alignment:
        if words and piece["word"] and not piece["word"].startswith(" "):
            last = words[-1]
            last["word"] += piece["word"]
            last["end"] = piece["end"]
            last["probability"] = min(last["probability"], piece["probability"])
            last["tokens"] = [*last["tokens"], *piece["tokens"]]
        elif piece["word"]:
            words.append(dict(piece))
    return words


def timed_words(
    model: WhisperModel,
    tokenizer: Tokenizer,
    tokens: list[int],
    encoded: ctranslate2.StorageView,
    content: int,
    offset: float,
    skip: int = 0,
) -> list[RecognizedWord]:
    """The words of ``tokens`` (text tokens only) with times in the clip plus ``offset``,
    kept inside the clip; the words of the first ``skip`` tokens (context) are left out."""
    text_tokens = [t for t in tokens if t < tokenizer.eot]
    if not text_tokens:
        return []
    alignment = model.find_alignment(tokenizer, [text_tokens], encoded, content)[0]
    merge_punctuations(alignment, PREPEND, APPEND)
    end_limit = offset + content / 100
    words: list[RecognizedWord] = []
    seen = 0
    for word in join_word_pieces(alignment):
        seen += len(word["tokens"])
        if seen <= skip:
            continue
        text = word["word"].strip()
        if not text:
            continue
        start = min(max(offset + float(word["start"]), offset), end_limit)
        end = min(max(offset + float(word["end"]), start), end_limit)
        words.append(
            RecognizedWord(
                text, round(start, 3), round(end, 3), round(float(word["probability"]), 3)
            )
        )
    return words
