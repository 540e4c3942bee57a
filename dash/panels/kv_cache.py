"""KV cache memory: one bar per layer of the window with tokens used / capacity and the
real bytes (kv_heads x head_dim x dtype bytes x 2 (K and V) per token per layer), the
status CLEARED | ACTIVE | ⚡ WRITE, and the KV head the selected query head reads."""

from __future__ import annotations

from dash import state
from dash.panels.attention_flow import group_size
from dash.panels.base import Panel, Row, bar, flash, waiting


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def bytes_per_token(run) -> int | None:
    """Bytes one token occupies in one layer's cache: K and V for every KV head (None
    when the run did not say its head size or dtype)."""
    if None in (run.num_kv_heads, run.head_dim, run.kv_dtype_bytes):
        return None
    return run.num_kv_heads * run.head_dim * run.kv_dtype_bytes * 2


def times(n: int, per_token: int | None) -> int | None:
    return None if per_token is None else n * per_token


class KVCache(Panel):
    title = "KV CACHE MEMORY"

    def heading(self, frame: state.Frame) -> Row:
        run = frame.view.run
        if run is None:
            return [("title", self.title)]
        per_token = human_bytes(bytes_per_token(run))
        shape = f"{run.num_kv_heads} KV heads × {run.head_dim} × {run.kv_dtype_bytes} B × 2 (K, V)"
        return [("title", self.title), ("label", f"  {shape} = {per_token}/token/layer")]

    def status(self, frame: state.Frame) -> Row:
        return flash(frame, "flash_write", "WRITE") if frame.meters.writing else []

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        view, ui = frame.view, frame.ui
        run = view.run
        if run is None:
            return waiting("waiting for the model's shape (RunInfo)…")
        source = view.decode or view.prefill
        used = source.cache_len if source is not None else 0
        capacity = source.cache_capacity if source is not None else run.cache_capacity
        per_token = bytes_per_token(run)
        kv_read = ui.head // group_size(run)
        if used == 0:
            status: Row = [("dim", "CLEARED  ")]
        elif frame.meters.writing:
            status = flash(frame, "flash_write", "WRITE  ")
        else:
            status = [("value", "ACTIVE   ")]
        used_bytes, capacity_bytes = (
            human_bytes(times(used, per_token)),
            human_bytes(times(capacity, per_token)),
        )
        size = f" {used}/{capacity} tok {used_bytes}/{capacity_bytes} "
        kv_cols = 3 * run.num_kv_heads + 4
        bar_cols = max(4, cols - 5 - len(size) - 9 - kv_cols)
        lines: list[Row] = []
        for layer in state.visible_layers(ui, run.num_layers, rows - 1):
            row: Row = [("label" if layer != ui.layer else "value", f"L{layer:<3d} ")]
            row += bar(used / capacity if capacity else 0.0, bar_cols)
            row += [("label", size), *status, ("dim", " kv")]
            for k in range(run.num_kv_heads):
                read = layer == ui.layer and k == kv_read
                row.append(("kv_read", f"[{k}]") if read else ("dim", f" {k} "))
            lines.append(row)
        total_used = times(used * run.num_layers, per_token)
        total_cap = times(capacity * run.num_layers * run.batch_size, per_token)
        total = f"all {run.num_layers} layers: {human_bytes(total_used)} used · "
        total += f"{human_bytes(total_cap)} allocated for {run.batch_size} sample(s)"
        lines.append([("dim", total)])
        return lines
