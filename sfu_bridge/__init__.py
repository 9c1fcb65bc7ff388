"""The WebRTC edge: WHIP, room sessions with a track map, SFU adapters, track -> PCM.

The only package that imports aiortc.
"""

from sfu_bridge.bridge import Bridge
from sfu_bridge.router import bridge_router
from sfu_bridge.whip import whip_router

__all__ = ["Bridge", "bridge_router", "whip_router"]
