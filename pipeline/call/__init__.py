"""The life of a call, the same for every way in (WebRTC, Janus, ``/v1/listen``, files):
``session`` (open, admit, time out, end, hand over), ``admission`` (the live-stream limit)."""

from pipeline.call.admission import Admission, CapacityError, Lease, StreamKind
from pipeline.call.session import (
    CallEndedError,
    CallLimits,
    CallSession,
    CallState,
    EndReason,
    IllegalCallTransition,
)

__all__ = [
    "Admission",
    "CallEndedError",
    "CallLimits",
    "CallSession",
    "CallState",
    "CapacityError",
    "EndReason",
    "IllegalCallTransition",
    "Lease",
    "StreamKind",
]
