"""mRoPE: the (t, h, w) rotary position of the current token and the ranges each axis
covers over the image tokens and the text of the prompt."""

from __future__ import annotations

import numpy as np

from dash import state
from dash.panels.base import Panel, Row, waiting


def axis_ranges(positions: np.ndarray, start: int, end: int) -> str:
    """``t 4–4 · h 4–7 · w 4–7`` over token positions ``[start, end)``."""
    part = positions[:, start:end]
    return " · ".join(
        f"{axis} {int(part[i].min())}–{int(part[i].max())}" for i, axis in enumerate("thw")
    )


class MRope(Panel):
    title = "mRoPE (t, h, w)"

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        view = frame.view
        lines: list[Row] = []
        if view.decode is not None and view.decode.positions is not None:
            t, h, w = (int(p) for p in view.decode.positions[-1])
            lines.append(
                [
                    ("label", f"current token Tok[{view.decode.last_step}]: (t, h, w) = "),
                    ("value", f"({t}, {h}, {w})"),
                ]
            )
        prefill = view.prefill
        if prefill is None:
            return lines + waiting("waiting for the prompt positions…")
        positions = np.asarray(prefill.positions)
        n = positions.shape[1] if positions.ndim == 2 and positions.shape[0] == 3 else 0
        if n == 0:
            return lines + [[("dim", "no prompt positions in the telemetry")]]
        for i, image in enumerate(prefill.images):
            start, end = image.span
            if 0 <= start < end <= n:
                lines.append(
                    [
                        ("label", f"image {i} tokens [{start}, {end}): "),
                        ("value", axis_ranges(positions, start, end)),
                    ]
                )
        text = np.ones(n, bool)
        for image in prefill.images:
            text[max(0, image.span[0]) : max(0, image.span[1])] = False
        if text.any():
            idx = np.flatnonzero(text)
            lines.append(
                [
                    ("label", f"{idx.size} text tokens: "),
                    ("value", axis_ranges(positions[:, idx], 0, idx.size)),
                ]
            )
        next_pos = int(positions.max()) + 1
        lines.append(
            [
                ("label", "prompt ends at "),
                ("value", f"({', '.join(str(int(x)) for x in positions[:, -1])})"),
                ("label", " · decoding continues at t = h = w = "),
                ("value", str(next_pos)),
            ]
        )
        return lines
