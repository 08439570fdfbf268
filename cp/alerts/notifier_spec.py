"""A notification target as the configuration declares it (``notifiers:``).

Only the name and kind are checked here; the options of each kind (url, secret, ...) belong to
the delivery side, which extends this model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cp.protocol import NAME_PATTERN

NotifierKind = Literal["webhook", "log", "apprise"]


class NotifierSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=NAME_PATTERN)
    kind: NotifierKind
