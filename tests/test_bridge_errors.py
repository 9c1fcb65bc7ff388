"""Every bridge route answers an error with the one body, a capacity refusal included."""

from pathlib import Path

from pipeline.call import Admission, StreamKind
from tests.bridge_peers import SpeechTrack, bridge_settings, client_peer, offer_for, running_bridge


async def test_capacity_refusals_of_whip_and_sessions_have_the_one_body(tmp_path: Path) -> None:
    async with running_bridge(bridge_settings(tmp_path)) as (bridge, client, _):
        admission = Admission(max_streams=1, max_duration_s=60, idle_timeout_s=60, retry_after_s=7)
        bridge.runtime.admission = admission
        assert admission.try_acquire(StreamKind.WEBSOCKET) is not None  # the one slot is taken
        pc = client_peer()
        pc.addTrack(SpeechTrack())
        offer = await offer_for(pc)
        whip = await client.post(
            "/whip/full/ann", content=offer, headers={"content-type": "application/sdp"}
        )
        session = await client.post("/v1/sessions", json={"room": "full", "sdp": offer})
        missing = await client.delete("/v1/sessions/nope")
        await pc.close()
    for response in (whip, session):
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "7"
        assert response.json()["error"]["code"] == "CAPACITY"
        assert set(response.json()) == {"error"}
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "NOT_FOUND", "message": "no session 'nope'"}}
