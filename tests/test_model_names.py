"""API callers name models from the catalog or the models folder, never filesystem paths."""

from pathlib import Path

from tests.api_helpers import make_settings, running_api


async def test_paths_get_one_answer_whether_they_exist_or_not(
    nats_url: str, tmp_path: Path
) -> None:
    (tmp_path / "models" / "my-model").mkdir(parents=True)
    existing = tmp_path / "elsewhere"
    existing.mkdir()
    names = ["/etc", "/no/such/folder", "../../etc", "~", str(existing), "my-model/../../x"]
    async with running_api(make_settings(nats_url, tmp_path)) as (client, services):
        answers = []
        for name in names:
            refused = await client.post(
                "/v1/transcripts", json={"audio_url": "http://a.example/a.wav", "model": name}
            )
            assert refused.status_code == 422, (name, refused.text)
            error = refused.json()["error"]
            assert error["code"] == "MODEL_NOT_FOUND"
            answers.append(error["message"].replace(repr(name), "NAME"))
            form = await client.post(
                "/v1/transcripts", files={"file": ("a.wav", b"RIFF")}, data={"model": name}
            )
            assert form.status_code == 422 and form.json()["error"] == error
        assert len(set(answers)) == 1, answers
        assert answers[0].startswith(
            "model NAME not found: not a catalog model or a folder of the models directory;"
        )
        for name in ("whisper-tiny.en", "my-model"):
            accepted = await client.post(
                "/v1/transcripts", json={"audio_url": "http://a.example/a.wav", "model": name}
            )
            assert accepted.status_code == 202, (name, accepted.text)
        metrics = services.metrics.render().decode()
        assert f'roomscribe_requests_refused_total{{reason="model"}} {2 * len(names)}.0' in metrics


async def test_an_operator_can_allow_paths(nats_url: str, tmp_path: Path) -> None:
    settings = make_settings(nats_url, tmp_path, api={"allow_model_paths": True})
    async with running_api(settings) as (client, _):
        accepted = await client.post(
            "/v1/transcripts", json={"audio_url": "http://a.example/a.wav", "model": "/etc"}
        )
        assert accepted.status_code == 202
