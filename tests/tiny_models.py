"""Tiny but valid sherpa-onnx streaming models, built with ``onnx`` for tests.

The transducer is a streaming zipformer2 in form (the encoder inputs, states and metadata
sherpa-onnx's OnlineRecognizer reads) with a hand-made, deterministic "acoustic model":

* the encoder averages the 80 log-mel bins into a low band (bins 0-19, below ~560 Hz) and a
  high band (bins 40-79, above ~1.9 kHz) and subsamples by 4 (one output frame per 40 ms);
* the joiner emits a token when one band is much louder than the other, and the decoder (the
  previous token) keeps a sustained tone from repeating it:
  a low tone spells ``▁HEL`` then ``LO`` (the word HELLO), a high tone spells ``▁WORLD``;
* silence (both bands equal) is blank, so sherpa-onnx's endpoint rules fire on it.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LOW_TONE_HZ = 300.0
HIGH_TONE_HZ = 3000.0
TOKENS = ["<blk>", "<sos/eos>", "<unk>", "▁HEL", "LO", "▁WORLD"]
HEL, LO, WORLD = 3, 4, 5

FEATURE_DIM = 80
DECODE_CHUNK_LEN = 32
CHUNK_FRAMES = 39
SUBSAMPLING = 4
LEFT_CONTEXT = 4
ENCODER_DIM = 4
CNN_KERNEL = 3
CONTEXT_SIZE = 2
MARGIN = 4.0  # log-mel units one band must exceed the other by to count as a tone
BLOCK = 100.0


def _save(graph: onnx.GraphProto, path: Path, metadata: dict[str, str]) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _state_specs() -> list[tuple[str, int, list[int | str]]]:
    nonlin = 3 * ENCODER_DIM // 4
    return [
        ("cached_key_0", TensorProto.FLOAT, [LEFT_CONTEXT, "N", 1]),
        ("cached_nonlin_attn_0", TensorProto.FLOAT, [1, "N", LEFT_CONTEXT, nonlin]),
        ("cached_val1_0", TensorProto.FLOAT, [LEFT_CONTEXT, "N", 1]),
        ("cached_val2_0", TensorProto.FLOAT, [LEFT_CONTEXT, "N", 1]),
        ("cached_conv1_0", TensorProto.FLOAT, ["N", ENCODER_DIM, CNN_KERNEL // 2]),
        ("cached_conv2_0", TensorProto.FLOAT, ["N", ENCODER_DIM, CNN_KERNEL // 2]),
        ("embed_states", TensorProto.FLOAT, ["N", 128, 3, (((FEATURE_DIM - 1) // 2) - 1) // 2]),
        ("processed_lens", TensorProto.INT64, ["N"]),
    ]


def _encoder_metadata() -> dict[str, str]:
    return {
        "model_type": "zipformer2",
        "version": "1",
        "model_author": "roomscribe-tests",
        "comment": "tiny deterministic tone model",
        "encoder_dims": str(ENCODER_DIM),
        "query_head_dims": "1",
        "value_head_dims": "1",
        "num_heads": "1",
        "num_encoder_layers": "1",
        "cnn_module_kernels": str(CNN_KERNEL),
        "left_context_len": str(LEFT_CONTEXT),
        "T": str(CHUNK_FRAMES),
        "decode_chunk_len": str(DECODE_CHUNK_LEN),
    }


def _band_matrix() -> np.ndarray:
    bands = np.zeros((FEATURE_DIM, 2), dtype=np.float32)
    bands[0:20, 0] = 1.0 / 20
    bands[40:80, 1] = 1.0 / 40
    return bands


def _band_nodes(x: str, out: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """x (N, T, 80) log-mel -> out (N, DECODE_CHUNK_LEN / 4, 2): (low, high) band levels."""
    inits = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([DECODE_CHUNK_LEN], dtype=np.int64), "chunk_len"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "time_axis"),
        numpy_helper.from_array(_band_matrix(), "bands"),
        numpy_helper.from_array(
            np.array([0, DECODE_CHUNK_LEN // SUBSAMPLING, SUBSAMPLING, 2], dtype=np.int64),
            "sub_shape",
        ),
    ]
    nodes = [
        helper.make_node("Slice", [x, "zero", "chunk_len", "time_axis"], ["chunk"]),
        helper.make_node("MatMul", ["chunk", "bands"], ["band_frames"]),
        helper.make_node("Reshape", ["band_frames", "sub_shape"], ["band_groups"]),
        helper.make_node("ReduceMean", ["band_groups"], [out], axes=[2], keepdims=0),
    ]
    return nodes, inits


def _streaming_graph(
    name: str,
    out: str,
    out_dim: int,
    head: list[onnx.NodeProto],
    head_inits: list[onnx.TensorProto],
) -> onnx.GraphProto:
    """x + zipformer2 states -> ``out`` (N, frames, out_dim) + the states carried forward."""
    states = _state_specs()
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CHUNK_FRAMES, FEATURE_DIM])
    ]
    inputs += [helper.make_tensor_value_info(state, kind, shape) for state, kind, shape in states]
    frames = DECODE_CHUNK_LEN // SUBSAMPLING
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", frames, out_dim])]
    outputs += [
        helper.make_tensor_value_info(f"new_{state}", kind, shape) for state, kind, shape in states
    ]
    nodes, inits = _band_nodes("x", "band_levels")
    nodes += head
    inits += head_inits
    inits.append(
        numpy_helper.from_array(np.array(DECODE_CHUNK_LEN, dtype=np.int64), "chunk_len_scalar")
    )
    for state, _, _ in states[:-1]:
        nodes.append(helper.make_node("Identity", [state], [f"new_{state}"]))
    nodes.append(
        helper.make_node("Add", ["processed_lens", "chunk_len_scalar"], ["new_processed_lens"])
    )
    return helper.make_graph(nodes, name, inputs, outputs, inits)


def build_encoder(path: Path) -> None:
    head = [helper.make_node("Identity", ["band_levels"], ["encoder_out"])]
    _save(_streaming_graph("encoder", "encoder_out", 2, head, []), path, _encoder_metadata())


def build_decoder(path: Path) -> None:
    vocab = len(TOKENS)
    inits = [
        numpy_helper.from_array(np.eye(vocab, dtype=np.float32), "embedding"),
        numpy_helper.from_array(np.array(CONTEXT_SIZE - 1, dtype=np.int64), "last"),
    ]
    nodes = [
        helper.make_node("Gather", ["y", "last"], ["previous"], axis=1),
        helper.make_node("Gather", ["embedding", "previous"], ["decoder_out"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", CONTEXT_SIZE])],
        [helper.make_tensor_value_info("decoder_out", TensorProto.FLOAT, ["N", vocab])],
        inits,
    )
    _save(graph, path, {"vocab_size": str(vocab), "context_size": str(CONTEXT_SIZE)})


def _joiner_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """logit = enc @ w_enc + previous_one_hot @ w_prev + bias; blank stays at 0."""
    vocab = len(TOKENS)
    # enc = (low, high); low tone score = low - high - MARGIN, high tone score = high - low - MARGIN
    w_enc = np.zeros((2, vocab), dtype=np.float32)
    w_enc[:, HEL] = w_enc[:, LO] = [1.0, -1.0]
    w_enc[:, WORLD] = [-1.0, 1.0]
    bias = np.zeros(vocab, dtype=np.float32)
    bias[[HEL, LO, WORLD]] = -MARGIN
    bias[[1, 2]] = -BLOCK
    w_prev = np.zeros((vocab, vocab), dtype=np.float32)
    w_prev[HEL, HEL] = w_prev[LO, HEL] = -BLOCK  # HEL is said once per low tone
    w_prev[:, LO] = -BLOCK
    w_prev[HEL, LO] = 0.0  # LO only right after HEL
    w_prev[WORLD, WORLD] = -BLOCK
    return w_enc, w_prev, bias


def build_joiner(path: Path) -> None:
    vocab = len(TOKENS)
    w_enc, w_prev, bias = _joiner_weights()
    inits = [
        numpy_helper.from_array(w_enc, "w_enc"),
        numpy_helper.from_array(w_prev, "w_prev"),
        numpy_helper.from_array(bias, "bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["encoder_out", "w_enc"], ["from_audio"]),
        helper.make_node("MatMul", ["decoder_out", "w_prev"], ["from_context"]),
        helper.make_node("Add", ["from_audio", "from_context"], ["summed"]),
        helper.make_node("Add", ["summed", "bias"], ["logit"]),
    ]
    graph = helper.make_graph(
        nodes,
        "joiner",
        [
            helper.make_tensor_value_info("encoder_out", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("decoder_out", TensorProto.FLOAT, ["N", vocab]),
        ],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N", vocab])],
        inits,
    )
    _save(graph, path, {"joiner_dim": "2"})


def write_tokens(path: Path) -> None:
    path.write_text(
        "".join(f"{token} {index}\n" for index, token in enumerate(TOKENS)), encoding="utf-8"
    )


def build_transducer(directory: Path) -> Path:
    """encoder.onnx, decoder.onnx, joiner.onnx and tokens.txt in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    build_encoder(directory / "encoder.onnx")
    build_decoder(directory / "decoder.onnx")
    build_joiner(directory / "joiner.onnx")
    write_tokens(directory / "tokens.txt")
    return directory


CTC_TOKENS = ["<blk>", "▁HELLO", "▁WORLD"]


def build_zipformer2_ctc(directory: Path) -> Path:
    """model.onnx + tokens.txt: per frame, HELLO for a low tone, WORLD for a high one, else
    blank (CTC collapses a sustained tone into one word)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = np.array([[0.0, 1.0, -1.0], [0.0, -1.0, 1.0]], dtype=np.float32)
    bias = np.array([0.0, -MARGIN, -MARGIN], dtype=np.float32)
    head = [
        helper.make_node("MatMul", ["band_levels", "ctc_w"], ["ctc_scores"]),
        helper.make_node("Add", ["ctc_scores", "ctc_b"], ["ctc_logits"]),
        helper.make_node("LogSoftmax", ["ctc_logits"], ["log_probs"], axis=-1),
    ]
    inits = [numpy_helper.from_array(weights, "ctc_w"), numpy_helper.from_array(bias, "ctc_b")]
    graph = _streaming_graph("zipformer2_ctc", "log_probs", len(CTC_TOKENS), head, inits)
    _save(graph, directory / "model.onnx", _encoder_metadata())
    (directory / "tokens.txt").write_text(
        "".join(f"{token} {index}\n" for index, token in enumerate(CTC_TOKENS)), encoding="utf-8"
    )
    return directory


def tone(hz: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16_000), dtype=np.float32)
