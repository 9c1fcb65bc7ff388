import numpy as np

from engines.embeddings import DIMENSION, SentenceEmbedder, embed, get_embedder


def test_embeddings_are_unit_vectors_that_rank_meaning() -> None:
    vectors = embed(
        [
            "We decided to use Postgres for the billing database.",
            "The team chose PostgreSQL as the database for billing.",
            "The marketing launch is planned for March.",
            "",
        ]
    )
    assert vectors.shape == (4, DIMENSION)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    same, other = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert same > 0.7
    assert other < 0.3


def test_batching_and_padding_do_not_change_a_vector() -> None:
    texts = ["short", "a much longer sentence that needs many more tokens than the first one"] * 3
    together = get_embedder().embed(texts, batch_size=4)
    alone = np.stack([get_embedder().embed([t])[0] for t in texts[:2]])
    assert np.allclose(together[:2], alone, atol=1e-4)
    assert np.allclose(together[2:4], alone, atol=1e-4)


def test_model_is_loaded_once_and_empty_input_is_fine() -> None:
    assert get_embedder() is get_embedder()
    assert isinstance(get_embedder(), SentenceEmbedder)
    assert embed([]).shape == (0, DIMENSION)


def test_missing_model_file_is_a_precise_error(tmp_path) -> None:
    import pytest

    from engines.base import ModelNotFoundError

    with pytest.raises(ModelNotFoundError) as err:
        SentenceEmbedder(model_path=tmp_path / "absent.onnx")
    assert err.value.code == "MODEL_NOT_FOUND"
    assert "absent.onnx" in str(err.value)
