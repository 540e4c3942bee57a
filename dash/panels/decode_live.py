"""Decode live: the token being sampled (``Tok[n]: "text" p=prob``), its id, the top-5
alternatives, cache fill and the sampling parameters, then the text generated so far."""

from __future__ import annotations

from dash import state
from dash.panels.base import Panel, Row, bar, flash, number, waiting
from dash.safe_text import clip, safe
from model import telemetry as tm

TOKEN_COLS = 16  # display columns for one token text in the alternatives list


def quoted(text: str, cols: int = TOKEN_COLS) -> str:
    return '"' + clip(safe(text), cols) + '"'


def sampling_text(sampling: dict) -> str:
    """``temperature 0.7 · top_k 50 · ...`` with integral values printed as integers."""
    parts = []
    for name, value in sampling.items():
        if isinstance(value, (int, float)) and float(value).is_integer():
            shown = str(int(value))
        elif isinstance(value, (int, float)):
            shown = f"{value:.3g}"
        else:
            shown = str(value)
        parts.append(f"{safe(str(name))} {safe(shown)}")
    return " · ".join(parts)


class DecodeLive(Panel):
    title = "DECODE LIVE"

    def heading(self, frame: state.Frame) -> Row:
        view = frame.view
        source = view.decode or view.prefill
        cache = "—/—" if source is None else f"{source.cache_len}/{source.cache_capacity}"
        return [("title", "DECODE LIVE"), ("label", "  Cache: "), ("value", cache)]

    def status(self, frame: state.Frame) -> Row:
        return (
            flash(frame, "flash_sampling", "SAMPLING")
            if frame.view.active_phase == "decode"
            else []
        )

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        view = frame.view
        e = view.decode
        if e is None:
            lines = waiting("waiting for the first decode step…")
        else:
            lines = [
                [
                    ("label", f"Tok[{e.last_step}]: "),
                    ("token", quoted(e.token_texts[-1], max(8, cols // 3))),
                    ("label", " p="),
                    ("value", number(float(e.probs[-1]))),
                    ("label", "   id "),
                    ("value", str(int(e.token_ids[-1]))),
                    ("label", f"   episode {e.episode} · sample {e.sample}"),
                    ("dim", " · done" if e.done else ""),
                ]
            ]
            fill = e.cache_len / e.cache_capacity if e.cache_capacity else float("nan")
            lines.append(
                [
                    ("label", "cache "),
                    *bar(fill, 24),
                    ("label", f" {e.cache_len}/{e.cache_capacity}"),
                ]
            )
            if view.run is not None:
                lines.append([("label", "sampling "), ("dim", sampling_text(view.run.sampling))])
            lines += self._alternatives(e, cols)
        lines += self._generated(view, cols, rows - len(lines))
        return lines

    def _alternatives(self, e: tm.DecodeChunk, cols: int) -> list[Row]:
        """The newest token's alternatives, when the chunk has them."""
        if e.top_ids is None or e.top_probs is None or e.top_texts is None:
            return []
        rows = []
        bar_cols = max(4, cols - TOKEN_COLS - 26)
        chosen_id = int(e.token_ids[-1])
        for rank, (tid, p, text) in enumerate(
            zip(e.top_ids[-1], e.top_probs[-1], e.top_texts[-1], strict=False)
        ):
            chosen = int(tid) == chosen_id
            rows.append(
                [
                    ("value" if chosen else "label", f" {rank + 1}. "),
                    ("token" if chosen else "value", quoted(text).ljust(TOKEN_COLS + 2)),
                    ("value", f" {number(float(p))} "),
                    *bar(float(p), bar_cols),
                    ("dim", f" id {int(tid)}"),
                ]
            )
        return rows

    def _generated(self, view: state.View, cols: int, rows: int) -> list[Row]:
        """The tail of the generated text, wrapped over the rows left; a dropped token
        shows as ``·``."""
        if rows <= 0 or not view.generated:
            return []
        pieces: list[str] = []
        expected = view.generated[0][0]
        for step, text in view.generated:
            pieces += ["·"] * (step - expected) + [safe(text)]
            expected = step + 1
        text = "".join(pieces)
        label = "text: "
        room = rows * cols - len(label)
        if len(text) > room:
            text = "…" + text[-(room - 1) :]
        out, first = [], True
        while text and len(out) < rows:
            take = cols - (len(label) if first else 0)
            chunk = clip(text, take, ellipsis="") or text[:1]
            out.append(([("label", label)] if first else []) + [("value", chunk)])
            text = text[len(chunk) :]
            first = False
        return out
