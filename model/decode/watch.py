"""The watched row's telemetry on the host: a chunk's unpacked ``Layout`` columns become
the ``DecodeChunk`` event of the watched sample's tokens, up to and including the token at
which it stopped."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from model.decode.layout import Layout
from model.telemetry import DecodeChunk, HeadStats

TokenTexts = Callable[[np.ndarray], tuple[str, ...]]  # display text of each id, flattened


@dataclasses.dataclass(frozen=True)
class Watch:
    """What a generation's ``DecodeChunk``s carry besides the chunk's telemetry."""

    layout: Layout
    token_texts: TokenTexts
    eos: frozenset[int]
    max_new_tokens: int
    episode: int

    def chunk(
        self,
        columns: dict[str, np.ndarray],
        before: np.ndarray,
        first: int,
        selection,
        elapsed_ms: float | None,
    ) -> DecodeChunk | None:
        """The watched sample's tokens of a chunk of steps ``first, first + 1, ...``.

        Args:
            columns: the chunk's ``Layout.unpack``, ``[n, ...]``.
            before: ``[n, B]`` whether each row had stopped before each step.
            selection: the ``(sample, layer, head)`` the chunk computed.
            elapsed_ms: the chunk's time per step (``None``: unknown, it compiled).
        Returns:
            the ``DecodeChunk`` of the tokens the watched sample kept, ``None`` if it had
            stopped before the chunk.
        """
        sample, layer, head = (int(s) for s in selection)
        n = int(np.count_nonzero(~before[:, sample]))
        if n == 0:
            return None
        ids = columns["tokens"][:n, sample]
        top_ids = columns["top_ids"][:n]
        k = top_ids.shape[1]
        top_texts = self.token_texts(top_ids)
        stats = HeadStats(**{f.name: columns[f.name][:n] for f in dataclasses.fields(HeadStats)})
        return DecodeChunk(
            episode=self.episode,
            sample=sample,
            first=first,
            token_ids=ids,
            token_texts=self.token_texts(ids),
            probs=columns["prob"][:n],
            top_ids=top_ids,
            top_probs=columns["top_probs"][:n],
            top_texts=tuple(top_texts[j * k : (j + 1) * k] for j in range(n)),
            cache_lens=columns["cache_len"][:n],
            cache_capacity=self.layout.capacity,
            positions=columns["position"][:n],
            stats=stats,
            layer=layer,
            head=head,
            attn_rows=columns["row"][:n],
            elapsed_ms=elapsed_ms,
            done=int(ids[-1]) in self.eos or first + n == self.max_new_tokens,
        )
