"""``run_inference`` on a tiny random model with the embedded tokenizer: the events it
emits, their contents, and how ``RolloutControl`` steers it."""

import json
import threading

import numpy as np
import PIL.Image
import pytest

from model import telemetry as tm
from model.rollout import (
    PromptError,
    Question,
    answer_questions,
    image_spans,
    read_question,
    run_inference,
)
from tests.model.recording import Recorder


@pytest.fixture(scope="module")
def image():
    x = np.linspace(0, 255, 64, dtype=np.uint8)
    r, g = np.broadcast_arrays(x[:, None], x[None, :])
    return PIL.Image.fromarray(np.stack([r, g, np.full_like(r, 128)], -1))


def _run(model, processor, image, sink, control, n=6, **kw):
    return run_inference(
        model,
        processor,
        prompt="What colour is the square?",
        image=image,
        sink=sink,
        control=control,
        sampling={"temperature": 0.0, "max_new_tokens": n},
        max_new_tokens=n,
        **kw,
    )


def test_event_sequence_and_contents(random_model, embedded_processor, image):
    model, processor = random_model, embedded_processor
    sink, control = Recorder(), tm.RolloutControl(layer=2, head=3)
    ids = _run(model, processor, image, sink, control, episode=4)
    compiles = [e for e in sink.events if e.kind == "phase" and e.phase == "compile"]
    assert [e.active for e in compiles] == [True, False] * (len(compiles) // 2)
    assert len(compiles) <= 6  # one phase before the prefill, a chunk, the profile
    events = [e for e in sink.events if e not in compiles]
    kinds = [e.kind for e in events]
    n = len(ids)
    assert kinds == ["run", "phase", "phase", "prefill", "phase"] + ["decode"] * n + [
        "phase",
        "profile",
    ]
    # sent as one DecodeChunk per chunk of decode steps, the prefill's token first
    chunks = [e for e in sink.sent if isinstance(e, tm.DecodeChunk)]
    sent = [e.kind for e in sink.sent if e not in compiles]
    assert sent == kinds[:5] + ["decode"] * len(chunks) + kinds[-2:]
    assert len(chunks[0]) == 1 and sum(map(len, chunks)) == n and len(chunks) < n
    phases = [(e.phase, e.active) for e in sink.of(tm.PhaseEvent) if e not in compiles]
    assert phases == [("prefill", True), ("prefill", False), ("decode", True), ("decode", False)]

    (info,) = sink.of(tm.RunInfo)
    assert (info.num_layers, info.num_heads, info.num_kv_heads) == (3, 4, 2)
    assert info.mode == "inference" and info.deepstack_layers == (0,)

    (pre,) = sink.of(tm.PrefillEvent)
    prompt = processor.prepare("What colour is the square?", [image])["input_ids"][0]
    np.testing.assert_array_equal(pre.token_ids, prompt)
    assert pre.tokens == tuple(processor.token_texts(prompt))
    assert pre.positions.shape == (3, len(prompt)) and pre.episode == 4
    (img,) = pre.images
    assert img.span == image_spans(prompt, model.config.image_token_id)[0]
    t, h, w = img.grid_thw
    assert img.span[1] - img.span[0] == t * h * w // 4
    assert img.pixels.dtype == np.uint8 and max(img.pixels.shape[:2]) <= 48
    assert (pre.layer, pre.head) == (2, 3) and pre.stats.max_weight.shape == (3, 4)
    assert pre.attn_map.shape == (min(len(prompt), 128),) * 2
    assert pre.vision_norm > 0 and pre.cache_len == len(prompt)

    decodes = sink.tokens()
    assert [d.step for d in decodes] == list(range(n))
    np.testing.assert_array_equal([d.token_id for d in decodes], ids)
    for d in decodes:
        assert d.cache_len == len(prompt) + d.step
        assert d.attn_row.shape == (d.cache_len,)
        assert abs(d.attn_row.sum() - 1) < 1e-4
        assert d.token_text == processor.token_texts([d.token_id])[0]
        assert d.top_texts == tuple(processor.token_texts(d.top_ids))
        assert d.top_ids[0] == d.token_id  # greedy
    assert decodes[-1].done
    (profile,) = sink.of(tm.StepProfile)
    assert set(profile.stage_ms) == set(tm.StepProfile.STAGES)
    assert all(v > 0 for v in profile.stage_ms.values())
    for e in sink.sent:  # every event survives the JSON Lines record format
        for record in tm.records(e):
            assert tm.from_record(json.loads(json.dumps(record))).kind == e.kind


def test_selection_moves_between_steps(random_model, embedded_processor, image):
    model, processor = random_model, embedded_processor
    control = tm.RolloutControl()

    def on_event(e):
        if e.kind == "decode":
            control.select(0, (e.step + 1) % 3, (e.step + 1) % 4)

    sink = Recorder(on_event)
    _run(model, processor, image, sink, control, n=12)
    # A chunk of steps is decoded with the selection read when it was dispatched, which is
    # after the events of the chunk before the one in flight (while paused, every chunk is
    # one step and a selection shows from the very next step: see below).
    asked = [(0, 0)] + [((s + 1) % 3, (s + 1) % 4) for s in range(12)]  # before step s + 1
    got = [(d.layer, d.head) for d in sink.tokens()]
    used = [asked.index(g) for g in got]
    assert used == sorted(used) and all(u <= s for s, u in enumerate(used))
    assert used[1] == 1 and used[-1] > 1  # the selection asked after step 0, then later ones


def test_pause_single_step_and_stop(random_model, embedded_processor, image):
    model, processor = random_model, embedded_processor
    control = tm.RolloutControl()
    control.set_paused(True)
    decoded = threading.Semaphore(0)
    sink = Recorder(lambda e: e.kind == "decode" and decoded.release())
    worker = threading.Thread(target=_run, args=(model, processor, image, sink, control, 20))
    worker.start()
    assert decoded.acquire(timeout=120)  # step 0 comes from the prefill
    assert not decoded.acquire(timeout=0.3)  # paused before decode step 1
    control.select(0, 2, 3)
    control.step_once()
    assert decoded.acquire(timeout=30)
    assert not decoded.acquire(timeout=0.3)
    control.stop()
    worker.join(30)
    assert not worker.is_alive()
    decodes = sink.tokens()
    assert [d.step for d in decodes] == [0, 1]
    assert (decodes[1].layer, decodes[1].head) == (2, 3)
    assert sink.events[-1].kind == "profile"


def test_compile_time_is_reported_as_compile_never_as_decode_or_prefill(
    random_model, embedded_processor, image
):
    """A first answer at a cache size nothing else uses compiles: the compile phases carry
    that time, and the prefill and the steps that compiled report no time of their own; the
    second answer compiles nothing and reports every time."""
    runs = []
    for _ in range(2):
        sink = Recorder()
        _run(random_model, embedded_processor, image, sink, tm.RolloutControl(), capacity=640)
        runs.append(sink)
    cold, warm = runs

    def compiled_ms(sink):
        return [e.elapsed_ms for e in sink.of(tm.PhaseEvent) if e.phase == "compile"]

    def times(sink):
        prefill = [e.elapsed_ms for e in sink.of(tm.PrefillEvent)]
        return prefill + [t.elapsed_ms for t in sink.tokens()[1:]]

    assert any(ms and ms > 0 for ms in compiled_ms(cold))
    assert None in times(cold)  # the prefill and the first decode step compiled
    assert compiled_ms(warm) == [] and None not in times(warm)
    decode_end = [e for e in warm.of(tm.PhaseEvent) if e.phase == "decode" and not e.active]
    assert decode_end[0].elapsed_ms > 0


def test_read_question_takes_an_image_path_anywhere(image, tmp_path):
    path = tmp_path / "x.png"
    image.save(path)
    q = read_question(f"where is @{path} the square?", None)
    assert q.prompt == "where is the square?" and q.image.size == image.size
    kept = read_question("and now?", q.image)
    assert kept.image is q.image
    for text, message in [
        (f"@{tmp_path / 'nope.png'} hi", "nope.png"),
        ("@a @b hi", "one @image"),
        (f"@{path}", "type a prompt"),
    ]:
        with pytest.raises(PromptError, match=message):
            read_question(text, None)


def test_answer_questions_answers_each_prompt_and_refuses_bad_ones(
    random_model, embedded_processor, image
):
    control = tm.RolloutControl()
    answered, refused = threading.Semaphore(0), threading.Semaphore(0)

    def on_event(e):
        if e.kind == "profile":
            answered.release()
        elif e.kind == "notice":
            refused.release()

    sink = Recorder(on_event)
    first = Question("What colour is the square?", image)
    worker = threading.Thread(
        target=answer_questions,
        args=(random_model, embedded_processor, first),
        kwargs=dict(
            sink=sink, control=control, sampling={"temperature": 0.0}, max_new_tokens=3,
            capacity=128,
        ),
    )  # fmt: skip
    worker.start()
    assert answered.acquire(timeout=120)
    for bad in ("<|vision_start|> hi", " ".join(["colour"] * 100)):
        control.submit_prompt(bad)
        assert refused.acquire(timeout=30)
    control.submit_prompt("How many shapes?")
    assert answered.acquire(timeout=120)
    control.stop()
    worker.join(30)
    assert not worker.is_alive()
    prefills = sink.of(tm.PrefillEvent)
    assert [p.episode for p in prefills] == [0, 1]
    assert prefills[1].images  # the image of the first question is kept
    assert {e.cache_capacity for e in sink.of(tm.RunInfo)} == {128}
    notices = [e.message for e in sink.of(tm.NoticeEvent)]
    assert "vision_start" in notices[0] and "cache's 128 slots" in notices[1]
