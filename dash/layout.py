"""The whole screen: header, two columns of panels, the error panel when the rollout
failed, the footer, and the help / traceback overlays. Below ``MIN_SIZE`` it shows an
"enlarge the terminal" screen instead.

Column layout (left | right), heights in rows, ``w`` = layers in the window, ``G`` = the
group size; the group and train panels are left out of an inference run. The head detail
gets 16 rows first (an 8 x 8 image grid unpooled), then the train panel all its metrics,
then the token credit up to 10:

    decode live   (the rest)       | head detail   (the rest)
    group         6..G + 4         | vision        6
    compute flow  5..10            | mRoPE         6
    attention     w + 5            | token credit  4..10
    KV cache      w + 3            | train         5..(its metrics)
"""

from __future__ import annotations

import urwid

from dash import state
from dash.panels.attention_flow import AttentionFlow
from dash.panels.base import empty_frame, rows_canvas
from dash.panels.compute_flow import ComputeFlow
from dash.panels.decode_live import DecodeLive
from dash.panels.error import ErrorPanel, TracebackOverlay
from dash.panels.footer import footer_row
from dash.panels.group import Group
from dash.panels.head_detail import HeadDetail
from dash.panels.header import Header
from dash.panels.help import HelpOverlay
from dash.panels.kv_cache import KVCache
from dash.panels.mrope import MRope
from dash.panels.token_credit import TokenCredit
from dash.panels.train import Train
from dash.panels.vision_injection import VisionInjection

MIN_SIZE = (100, 30)
DECODE_MIN, FLOW_MIN, FLOW_MAX, ERROR_ROWS = 10, 5, 10, 4
GROUP_MIN, CREDIT_MIN, TRAIN_MIN = 6, 4, 5
DETAIL_WANT = 16  # head detail rows that show an 8 x 8 image grid unpooled


def _stack(parts: list[tuple[urwid.Widget, int]], cols: int) -> urwid.Canvas:
    return urwid.CanvasCombine([(w.render((cols, h)), None, False) for w, h in parts if h > 0])


def too_small(cols: int, rows: int) -> urwid.Canvas:
    need = f"enlarge the terminal (need {MIN_SIZE[0]}×{MIN_SIZE[1]}, have {cols}×{rows})"
    lines = [[("warn", need.center(cols))], [("dim", "q quits".center(cols))]]
    top = max(0, rows // 2 - 1)
    return rows_canvas([[] for _ in range(top)] + lines, cols, rows)


class Dashboard(urwid.Widget):
    _sizing = frozenset([urwid.Sizing.BOX])
    _selectable = False

    def __init__(self) -> None:
        super().__init__()
        self.frame = empty_frame()
        self.header = Header()
        self.decode = DecodeLive()
        self.flow = ComputeFlow()
        self.attention = AttentionFlow()
        self.kv = KVCache()
        self.detail = HeadDetail()
        self.vision = VisionInjection()
        self.mrope = MRope()
        self.credit = TokenCredit()
        self.group = Group()
        self.train = Train()
        self.error = ErrorPanel()
        self.help = HelpOverlay()
        self.traceback = TracebackOverlay()
        self.parts = (
            self.header,
            self.decode,
            self.flow,
            self.attention,
            self.kv,
            self.detail,
            self.vision,
            self.mrope,
            self.credit,
            self.group,
            self.train,
            self.error,
            self.help,
            self.traceback,
        )

    def show(self, frame: state.Frame) -> None:
        self.frame = frame
        for part in self.parts:
            part.show(frame)
        self._invalidate()

    def render(self, size: tuple[int, int], focus: bool = False) -> urwid.Canvas:
        cols, rows = size
        if cols < MIN_SIZE[0] or rows < MIN_SIZE[1]:
            return too_small(cols, rows)
        view, ui = self.frame.view, self.frame.ui
        error_rows = ERROR_ROWS if view.error is not None else 0
        body = rows - Header.ROWS - 1 - error_rows
        left_cols = cols // 2
        right_cols = cols - left_cols
        layers = view.run.num_layers if view.run else ui.window
        rl = view.run is None or view.run.mode != "inference" or view.train is not None
        group_size = view.run.batch_size if view.run else 8
        group = max(GROUP_MIN, min(group_size + 4, (body - 21) // 2)) if rl else 0
        window = max(1, min(ui.window, layers, (body - DECODE_MIN - FLOW_MIN - group - 8) // 2))
        attention, kv = window + 5, window + 3
        rest = body - attention - kv
        flow = min(FLOW_MAX, max(FLOW_MIN, rest - DECODE_MIN - group - 4))
        left = _stack(
            [
                (self.decode, rest - flow - group),
                (self.group, group),
                (self.flow, flow),
                (self.attention, attention),
                (self.kv, kv),
            ],
            left_cols,
        )
        vision = 5 + (len(view.prefill.images) if view.prefill else 1)
        if rl:  # the head detail keeps DETAIL_WANT rows, the train panel comes next
            train_rows = self.train.rows_wanted(self.frame, right_cols)
            rest = body - vision - 6 - DETAIL_WANT
            credit = max(CREDIT_MIN, min(10, rest - train_rows))
            train = max(TRAIN_MIN, min(train_rows, rest - credit))
        else:
            credit, train = max(5, min(10, body // 4)), 0
        fixed = vision + 6 + credit
        right = _stack(
            [
                (self.detail, body - fixed - train),
                (self.vision, vision),
                (self.mrope, 6),
                (self.credit, credit),
                (self.train, train),
            ],
            right_cols,
        )
        columns = urwid.CanvasJoin(
            [(left, None, False, left_cols), (right, None, False, right_cols)]
        )
        footer = rows_canvas([footer_row(cols, ui)], cols, 1, pad_attr="footer")
        stack = [(self.header.render((cols, Header.ROWS)), None, False), (columns, None, False)]
        if error_rows:
            stack.append((self.error.render((cols, error_rows)), None, False))
        stack.append((footer, None, False))
        canvas = urwid.CanvasCombine(stack)
        if ui.help:
            canvas = self._overlay(canvas, self.help, *HelpOverlay.size(), cols, rows)
        elif ui.traceback and view.error is not None:
            canvas = self._overlay(canvas, self.traceback, cols * 4 // 5, rows * 4 // 5, cols, rows)
        return canvas

    @staticmethod
    def _overlay(canvas, widget, want_cols, want_rows, cols, rows) -> urwid.Canvas:
        w, h = min(want_cols, cols - 2), min(want_rows, rows - 2)
        top = urwid.CompositeCanvas(widget.render((w, h)))
        top.fill_attr("help")
        under = urwid.CompositeCanvas(canvas)
        under.overlay(top, (cols - w) // 2, (rows - h) // 2)
        return under
