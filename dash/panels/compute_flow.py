"""Computation flow: the phases of the loop (prefill -> decode -> reward -> update) with
the active one flashing and each one's measured time (a running phase's progress, such
as prompts sampled 12/64), and the stages of one decode step
(mRoPE -> Q/K/V -> attention -> KV write -> sample) with their profiled times as bars."""

from __future__ import annotations

from dash import state
from dash.panels.base import Panel, Row, bar, flash, number
from model import telemetry as tm

STAGE_LABELS = {
    "mrope": "mRoPE",
    "qkv": "Q/K/V",
    "attention": "Attention",
    "kv_write": "KV write",
    "sample": "Sample",
}


def _phase(frame: state.Frame, name: str, timing: str) -> Row:
    if frame.view.active_phase == name:
        lit = frame.meters.flash_on
        return [
            ("flash_active" if lit else "value", ("⚡" if lit else " ") + name.upper()),
            ("value", f" {timing}"),
        ]
    return [("label", f" {name}"), ("dim", f" {timing}")]


class ComputeFlow(Panel):
    title = "COMPUTATION FLOW"

    def status(self, frame: state.Frame) -> Row:
        if frame.view.compiling:
            return flash(frame, "flash_active", "COMPILING")
        return flash(frame, "flash_active", "ACTIVE") if frame.view.active_phase else []

    def body(self, frame: state.Frame, cols: int, rows: int) -> list[Row]:
        view = frame.view
        step_ms = view.step_time_ms
        timings = {}
        for name in tm.PhaseEvent.PHASES:
            phase = view.phases.get(name)
            timings[name] = number(phase.last_ms if phase else None, "{:.1f} ms")
        timings["decode"] = number(step_ms, "{:.2f} ms/tok")
        if view.decode is not None:
            timings["decode"] += f" ×{view.decode.last_step + 1}"
        for name, phase in view.phases.items():  # a running phase's progress, e.g. 12/64
            if name in timings and phase.active and phase.total:
                timings[name] = f"{phase.done}/{phase.total}"
        phases: Row = []
        for i, name in enumerate(tm.PhaseEvent.PHASES):
            phases += ([("border", " ─▶")] if i else []) + _phase(frame, name, timings[name])

        profile = view.profile
        lit = view.active_phase == "decode" and frame.meters.flash_on
        chain: Row = [("label", " per token:")]
        for i, stage in enumerate(tm.StepProfile.STAGES):
            chain += [("border", " →")] if i else []
            chain.append(("flash_active" if lit else "value", f" {STAGE_LABELS[stage]}"))
        lines = [phases, chain]
        compiled = view.phases.get(state.COMPILE)
        if compiled is not None:
            done = "compiling XLA programs…" if compiled.active else "XLA compiled in "
            if not compiled.active:
                done += number(compiled.last_ms, "{:.0f} ms")
            lines.append([("dim", f" {done} (counted in no phase above)")])
        if profile is None:
            return lines + [[("dim", " stage times: waiting for a profile of the decode step")]]
        times = {s: profile.stage_ms.get(s) for s in tm.StepProfile.STAGES}
        known = [t for t in times.values() if state.finite(t)]
        peak = max(known) if known else 0.0
        if rows >= len(lines) + len(times) + 1:
            for stage, ms in times.items():
                fraction = ms / peak if state.finite(ms) and peak > 0 else float("nan")
                lines.append(
                    [
                        ("label", f"   {STAGE_LABELS[stage]:<10}"),
                        ("value", number(ms, "{:7.3f} ms ")),
                        *bar(fraction, max(4, cols - 28)),
                    ]
                )
        note = f" stages profiled alone at cache length {profile.cache_len}"
        if step_ms is not None:
            note += f"; the fused step measured {step_ms:.2f} ms"
        return lines + [[("dim", note)]]
