"""The bridge's UDP sockets: kernel drop counts read from /proc and bigger receive buffers."""

import os
import socket
from pathlib import Path

import pytest

from sfu_bridge.udp import UdpDropCounter, own_socket_inodes, parse_udp_table
from tests.bridge_peers import answer, bridge_settings, client_peer, offer_for, running_bridge

TABLE = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  412: 0100007F:A1B2 00000000:0000 07 00000000:00000340 00:00000000 00000000     0        0 4242 2 0000000000000000 17
  413: 0100007F:A1B3 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4343 2 0000000000000000 5
"""

linux_only = pytest.mark.skipif(not Path("/proc/self/net/udp").exists(), reason="needs Linux /proc")


def test_table_rows_of_own_inodes_only() -> None:
    assert parse_udp_table(TABLE, {4242}) == {4242: (0x340, 17)}
    assert parse_udp_table(TABLE, {4242, 4343}) == {4242: (0x340, 17), 4343: (0, 5)}
    assert parse_udp_table("header only\n", {4242}) == {}


@linux_only
def test_kernel_drops_on_a_full_socket_are_counted_and_kept_after_close() -> None:
    counter = UdpDropCounter()
    before = counter.read()
    assert before is not None
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(500):  # nobody reads: the small buffer overflows
            sender.sendto(b"x" * 1000, receiver.getsockname())
        full = counter.read()
        assert full is not None
        assert full.sockets >= before.sockets + 2
        assert full.drops - before.drops >= 400, (before, full)
        assert full.queued_bytes > 0
    finally:
        receiver.close()
        sender.close()
    after = counter.read()
    assert after is not None and after.drops == full.drops  # the closed socket's drops stay
    assert after.sockets == full.sockets - 2


@linux_only
def test_own_socket_inodes_are_this_process_sockets() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        inode = os.fstat(sock.fileno()).st_ino
        assert inode in own_socket_inodes()
    assert inode not in own_socket_inodes()


async def test_ice_sockets_get_the_receive_buffer_asked_for(tmp_path: Path) -> None:
    granted = {}
    for asked_kb in (0, 1024):
        settings = bridge_settings(tmp_path / str(asked_kb), udp_receive_buffer_kb=asked_kb)
        async with running_bridge(settings) as (bridge, client, _):
            pc = client_peer()
            pc.addTransceiver("audio", direction="sendonly")
            try:
                created = await client.post(
                    "/whip/room-udp/alice",
                    content=await offer_for(pc),
                    headers={"content-type": "application/sdp"},
                )
                assert created.status_code == 201, created.text
                await answer(pc, created.text)
                granted[asked_kb] = bridge.udp_receive_buffer
                names = [m.name for m in bridge.metrics()]
                assert "roomscribe_udp_drops" in names
            finally:
                await pc.close()
    assert granted[0] == 0  # left to the OS
    assert granted[1024] >= 1024 * 1024, granted  # Linux reports double what it keeps
