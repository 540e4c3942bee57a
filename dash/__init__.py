"""The live terminal dashboard: urwid on asyncio, the rollout in an anyio worker thread.

``dash.run(rollout_fn, ...)`` and ``dash.LiveTUI`` are the integration API (``dash.api``).
"""

from dash.api import LiveTUI, run

__all__ = ["LiveTUI", "run"]
