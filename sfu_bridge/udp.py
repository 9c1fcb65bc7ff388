"""The bridge's UDP sockets: bigger receive buffers, and the kernel's drop counts for them.

A burst of packets while the event loop is busy waits in the socket's receive buffer; when
the buffer is full the kernel drops datagrams, which for live captions is lost speech. Linux
reports each socket's drops in ``/proc/<pid>/net/udp`` (and ``udp6``) by inode; the inodes of
this process's sockets come from ``/proc/self/fd``.
"""

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROC_TABLES = (Path("/proc/self/net/udp"), Path("/proc/self/net/udp6"))


@dataclass(frozen=True)
class UdpStats:
    sockets: int
    drops: int  # since the process started, closed sockets included
    queued_bytes: int


def own_socket_inodes(fd_dir: Path = Path("/proc/self/fd")) -> set[int]:
    inodes: set[int] = set()
    try:
        entries = os.listdir(fd_dir)
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(fd_dir / entry)
        except OSError:
            continue  # closed while listing
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def parse_udp_table(text: str, inodes: set[int]) -> dict[int, tuple[int, int]]:
    """inode -> (rx_queue bytes, drops) for the rows of ``inodes`` in a /proc/net/udp table."""
    rows = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13 or not fields[9].isdigit() or int(fields[9]) not in inodes:
            continue
        rows[int(fields[9])] = (int(fields[4].split(":")[1], 16), int(fields[12]))
    return rows


class UdpDropCounter:
    """Kernel drops on this process's UDP sockets, counting those of sockets since closed."""

    def __init__(self, tables: tuple[Path, ...] = PROC_TABLES) -> None:
        self.tables = tables
        self._last: dict[int, int] = {}
        self._closed = 0

    def read(self) -> UdpStats | None:
        """None where the OS has no such tables."""
        inodes = own_socket_inodes()
        rows: dict[int, tuple[int, int]] = {}
        readable = False
        for table in self.tables:
            try:
                rows |= parse_udp_table(table.read_text(), inodes)
                readable = True
            except OSError:
                continue
        if not readable:
            return None
        self._closed += sum(d for inode, d in self._last.items() if inode not in rows)
        self._last = {inode: drops for inode, (_, drops) in rows.items()}
        return UdpStats(
            len(rows),
            self._closed + sum(self._last.values()),
            sum(queued for queued, _ in rows.values()),
        )


def enlarge_receive_buffers(pc: Any, size: int) -> int | None:
    """Ask for ``size``-byte receive buffers on a peer connection's ICE sockets; returns what
    the OS granted (Linux caps it at ``net.core.rmem_max`` and reports double), None if no
    socket was found. Reaches into aiortc/aioice, which offer no option for it."""
    granted = None
    for transceiver in pc.getTransceivers():
        ice = transceiver.receiver.transport.transport
        for protocol in getattr(getattr(ice, "_connection", None), "_protocols", []):
            sock = getattr(getattr(protocol, "transport", None), "get_extra_info", None)
            raw = sock("socket") if sock is not None else None
            if raw is None:
                continue
            try:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                granted = raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            except OSError as exc:
                log.warning("could not set SO_RCVBUF on an ICE socket: %s", exc)
    return granted
