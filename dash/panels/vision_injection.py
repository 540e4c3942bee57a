"""Vision injection: where the image tokens sit in the prompt (span and index), the patch
grid before and after the spatial merge, how many vision tokens, the DeepStack layers that
receive visual features, and the norms of vision vs text embeddings."""

from __future__ import annotations

from dash import state
from dash.panels.base import Panel, Row, bar, number, waiting


class VisionInjection(Panel):
    def heading(self, frame: state.Frame) -> Row:
        prefill = frame.view.prefill
        if prefill is None or not prefill.images:
            return [("title", "VISION INJECTION")]
        return [("title", "VISION INJECTION @ "), ("value", f"Token[{prefill.images[0].span[0]}]")]

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        view = frame.view
        prefill = view.prefill
        if prefill is None:
            return waiting("waiting for the prompt (prefill)…")
        if not prefill.images:
            return [[("label", "text-only prompt: no vision tokens")]]
        lines: list[Row] = []
        vision_tokens = 0
        for i, image in enumerate(prefill.images):
            t, h, w = image.grid_thw
            m = max(1, image.merge_size)
            start, end = image.span
            vision_tokens += end - start
            lines.append(
                [
                    ("label", f"image {i}: tokens "),
                    ("value", f"[{start}, {end})"),
                    ("label", " · grid t×h×w "),
                    ("value", f"{t}×{h}×{w}"),
                    ("label", f" → merged ({m}×{m}) "),
                    ("value", f"{t}×{h // m}×{w // m}"),
                ]
            )
        deepstack = view.run.deepstack_layers if view.run else None
        layers = "—" if deepstack is None else ", ".join(str(x) for x in deepstack) or "none"
        lines.append(
            [
                ("label", "vision tokens "),
                ("value", str(vision_tokens)),
                ("label", f" of {len(prefill.tokens)} prompt tokens · DeepStack → layers "),
                ("value", layers),
            ]
        )
        vn, tn = prefill.vision_norm, prefill.text_norm
        peak = max(abs(vn), abs(tn)) if state.finite(vn) and state.finite(tn) else float("nan")
        bar_cols = max(4, cols - 34)
        for name, norm in (("vision", vn), ("text", tn)):
            fraction = abs(norm) / peak if peak == peak and peak > 0 else float("nan")
            lines.append(
                [
                    ("label", f"{name} embedding norm ".rjust(24)),
                    ("value", number(norm, "{:8.3f}") + " "),
                    *bar(fraction, bar_cols),
                ]
            )
        return lines
