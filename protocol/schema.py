"""JSON Schema of every record on the wire, for ``roomscribe schema``."""

from typing import Any

from pydantic import BaseModel

from protocol.errors import ErrorBody
from protocol.frames import CaptionFrame, ErrorFrame, EventFrame
from protocol.jobs import JobRecord
from protocol.listen import ListenCompleted, ListenEnd, ListenError, ListenReady, ListenStart
from protocol.webhooks import CallEndedData, Delivery, JobEventData, WebhookEvent

WIRE_MODELS: dict[str, tuple[type[BaseModel], ...]] = {
    "frames": (CaptionFrame, EventFrame, ErrorFrame),
    "listen": (ListenStart, ListenEnd, ListenReady, ListenCompleted, ListenError),
    "jobs": (JobRecord,),
    "webhooks": (WebhookEvent, CallEndedData, JobEventData, Delivery),
    "http": (ErrorBody,),
}


def wire_schemas() -> dict[str, dict[str, Any]]:
    """Group -> model name -> JSON Schema."""
    return {
        group: {model.__name__: model.model_json_schema() for model in models}
        for group, models in WIRE_MODELS.items()
    }
