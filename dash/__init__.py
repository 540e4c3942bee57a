"""The live terminal dashboard: urwid on asyncio, the rollout in an anyio worker thread.

``dash.run(rollout_fn, ...)`` and ``dash.LiveTUI`` are the integration API (``dash.api``);
``dash.serve(rollout_fn, address)`` runs a rollout headless for viewers that attach
(``dash.serving``).
"""

from dash.api import LiveTUI, run
from dash.serving import serve

__all__ = ["LiveTUI", "run", "serve"]
