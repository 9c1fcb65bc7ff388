"""The base of every JSON request body."""

from pydantic import BaseModel, ConfigDict


class JsonBody(BaseModel):
    """A JSON request body: a number must be a JSON number and a flag a JSON boolean.

    Lax coercion would read ``true`` as 1, ``1`` as true and ``"3"`` as 3, accepting what the
    published schema refuses; a caller gets 422 naming the field instead.
    """

    model_config = ConfigDict(strict=True)
