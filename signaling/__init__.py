"""The signaling tier: HTTP API, the ``/ws`` signaling socket and the demo client.

:func:`signaling.app.create_app` builds the FastAPI application; the dependency
aliases shared by its routers live here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from sfu.config import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]
