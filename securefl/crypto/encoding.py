"""Base64 for keys, signatures and shares inside JSON message headers and files."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from securefl.exceptions import ProtocolError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: Any, what: str) -> bytes:
    """Decode strict base64; :class:`ProtocolError` naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise ProtocolError(f"{what}: expected base64 text")
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what}: not valid base64") from None
