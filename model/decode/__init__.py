"""Generation with telemetry: a prefill, then the decode in chunks, with the watched row's
attention reduced inside the compiled programs.

Flow of ``generate`` (``model.decode.generate``):

1. The prompt is prepared (``model.qwen3_vl.prepare_prompt``), encoded (vision tower and
   embeddings) and padded on the right to a multiple of ``PROMPT_BUCKET`` tokens, so prompts
   of similar length share one compile.
2. ``programs.prefill``: the full forward over the prompt (causal attention one block of
   queries at a time, so memory grows as ``T x block``, not ``T x T``) writes every layer's
   keys and values into the preallocated KV cache; the first new token is sampled from the
   logits of the last prompt position.
3. ``programs.decode_chunk`` per chunk of ``n <= CHUNK`` further tokens: a
   ``lax.while_loop`` feeds the newest token of every row, attends (``forward``) and samples
   the next token; it ends after ``n`` steps or once every row has sampled an EOS. Nothing
   in a chunk waits for the host.
4. The host (``schedule``) sizes each chunk, honours pause, single step and stop, keeps
   every row's tokens up to its EOS, and turns each chunk's telemetry into one
   ``model.telemetry.DecodeChunk`` of the watched sample's tokens (``watch``).

Telemetry (``telemetry=True``) of one watched batch row is computed inside both programs,
for every token (``summaries``): per layer and query head the max weight, entropy, vision
mass, sink mass and argmax of the newest query's attention; the full row of the selected
``(layer, head)``; the sampled token's probability and top-5 alternatives; the cache length
and the query's mRoPE position. It leaves the device packed in two arrays per chunk whose
columns one table defines (``layout``). The prefill adds the selected head's ``T x T`` map,
block-max pooled on the device to at most ``MAP_SIZE x MAP_SIZE``.
"""

from model.decode.forward import CHUNK, MAP_SIZE
from model.decode.generate import (
    CAPACITY_BUCKET,
    PROMPT_BUCKET,
    Generation,
    PrefillTelemetry,
    default_capacity,
    generate,
)

__all__ = [
    "CAPACITY_BUCKET",
    "CHUNK",
    "MAP_SIZE",
    "PROMPT_BUCKET",
    "Generation",
    "PrefillTelemetry",
    "default_capacity",
    "generate",
]
