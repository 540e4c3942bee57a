"""The live terminal dashboard: urwid on asyncio, the rollout in an anyio worker thread."""
