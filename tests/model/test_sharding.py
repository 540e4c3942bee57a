"""Several devices and processes: the partitioning table and the mesh's one-line errors
(here, on one device); every sharded result equal to the one-device run on 8 simulated CPU
devices (``sharded_checks``, in a subprocess, so the rest of the suite keeps one device);
a real run of two processes over gloo equal to one process (``multiprocess_run``)."""

from __future__ import annotations

import fnmatch
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec

from model import sharding
from model.config import Qwen3VLConfig, TextConfig, VisionConfig
from model.qwen3_vl import init_random
from tests.model import sharded_checks

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


def _config(**text) -> Qwen3VLConfig:
    t = dict(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=4, mrope_section=(1, 1, 0),
    ) | text  # fmt: skip
    vision = VisionConfig(
        depth=2, hidden_size=8, intermediate_size=16, num_heads=2, out_hidden_size=16,
        num_position_embeddings=16, deepstack_visual_indexes=(0,),
    )  # fmt: skip
    return Qwen3VLConfig(TextConfig(**t), vision)


def _mesh(data: int, model: int) -> AbstractMesh:
    return AbstractMesh((data, model), (sharding.DATA, sharding.MODEL))


def test_parse_mesh():
    assert sharding.parse_mesh("data=2,model=4") == {"data": 2, "model": 4}
    assert sharding.parse_mesh("model=8") == {"data": 1, "model": 8}
    for bad in ("data=0", "model=x", "pipe=2", "data=2;model=2"):
        with pytest.raises(sharding.MeshError, match="expected data=D,model=M"):
            sharding.parse_mesh(bad)


def test_every_parameter_has_its_row_of_the_table():
    """Each pattern of ``PARAMETERS`` names parameters of a model with every optional part
    (biases, an untied LM head), with one logical axis per dimension; the rest, the vision
    tower among them, is replicated."""
    m = init_random(_config(attention_bias=True), seed=0)
    used = set()
    for path, var in nnx.to_flat_state(nnx.state(m)):
        name = ".".join(str(p) for p in path)
        patterns = [p for p in sharding.PARAMETERS if fnmatch.fnmatchcase(name, p)]
        axes = sharding.parameter_axes(path)
        assert axes == (sharding.PARAMETERS[patterns[0]] if patterns else None), name
        if path[0] == "visual" or "norm" in name:
            assert axes is None, name
        if axes is not None:
            assert len(axes) == len(var.shape), name
        used.update(patterns)
    assert used == set(sharding.PARAMETERS)


def test_kv_heads_are_split_only_where_the_model_axis_divides_them():
    config = _config(num_attention_heads=8, num_key_value_heads=2, head_dim=8)
    q = ("language_model", "layers", 0, "self_attn", "q_proj", "weight")
    k = ("language_model", "layers", 0, "self_attn", "k_proj", "weight")

    def spec(path, model):
        shape = (8 * 8 if path == q else 2 * 8, 16)  # heads x head_dim, hidden
        return sharding.parameter_sharding(path, shape, config, _mesh(1, model)).spec

    assert spec(q, 4) == PartitionSpec("model", None)
    assert spec(k, 2) == PartitionSpec("model", None)
    # 2 KV heads x 8 = 16 rows divide by 4, but 2 heads do not: every device keeps both
    assert spec(k, 4) == PartitionSpec(None, None)
    assert sharding.spec(sharding.CACHE["k"], (8, 2, 128, 8), {"data": 2, "model": 4}) == (
        PartitionSpec("data", None, None, None)
    )


@pytest.mark.parametrize(
    ("text", "model", "message"),
    [
        ({"num_attention_heads": 6, "num_key_value_heads": 2}, 4, "num_attention_heads 6"),
        ({"intermediate_size": 30}, 4, "intermediate_size 30"),
        ({"vocab_size": 66}, 4, "vocab_size 66"),
    ],
)
def test_a_mesh_that_does_not_divide_gets_one_line_naming_the_dimension(text, model, message):
    with pytest.raises(sharding.MeshError) as e:
        sharding.check(_config(**text), _mesh(1, model))
    assert str(e.value) == f"mesh data=1,model={model}: model={model} does not divide {message}"
    with pytest.raises(sharding.MeshError, match=r"data=2 does not divide the GRPO group \(3 rows"):
        sharding.check_batch(3, _mesh(2, 1), "the GRPO group")


def test_mesh_errors_on_the_command_lines():
    env = dict(ENV, XLA_FLAGS="--xla_force_host_platform_device_count=8")

    def run(*args: str) -> tuple[int, str]:
        p = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = [line for line in p.stderr.splitlines() if not line.startswith("[transformers]")]
        return p.returncode, "\n".join(lines)

    code, err = run(sys.executable, "-m", "dash", "--snapshot", "--mesh", "model=8")
    assert code == 2
    assert (
        err == "python -m dash: mesh data=1,model=8: model=8 does not divide num_attention_heads 4"
    )
    code, err = run(sys.executable, "-m", "dash", "--snapshot", "--mesh", "data=3,model=4")
    assert (code, err) == (2, "python -m dash: mesh data=3,model=4 needs 12 devices, 8 are visible")
    code, err = run(
        sys.executable, "-m", "model", "generate", "--model", "assets/tiny-qwen3vl",
        "--prompt", "hi", "--mesh", "data=2,model=2",
    )  # fmt: skip
    assert code == 2
    assert err == (
        "python -m model generate: mesh data=2,model=2: data=2 does not divide the batch (1 row)"
    )


@pytest.fixture(scope="module")
def sharded_checks_run() -> dict[str, dict]:
    """``sharded_checks`` run once, in a subprocess with its 8 CPU devices."""
    p = subprocess.run(
        [sys.executable, "-m", "tests.model.sharded_checks"],
        env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    results = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["check"]] = record
    if not results:
        pytest.fail(f"sharded_checks reported nothing (exit {p.returncode}):\n{p.stderr[-4000:]}")
    return results | {"stderr": p.stderr}


@pytest.mark.parametrize("name", sharded_checks.names())
def test_sharded_run_equals_one_device(sharded_checks_run, name):
    record = sharded_checks_run.get(name)
    assert record is not None, f"{name} did not run:\n{sharded_checks_run['stderr'][-4000:]}"
    assert record["error"] is None, record["error"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    """``generate`` with telemetry (the selection moving, a pause), two GRPO steps, a prompt
    and a stop from process 0, in two processes over gloo on a data=2, model=2 mesh; then one
    process on one device replaying the same selections."""
    two, one = tmp_path / "two", tmp_path / "one"
    address = f"127.0.0.1:{_free_port()}"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.model.multiprocess_run",
                str(two),
                "--coordinator",
                address,
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--mesh",
                "data=2,model=2",
            ],
            env=ENV,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        logs = [p.communicate(timeout=900)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], "\n".join(s[-3000:] for s in logs)
    single = subprocess.run(
        [sys.executable, "-m", "tests.model.multiprocess_run", str(one), "--selections",
         f"{two}.0.npz"],
        env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    with np.load(f"{two}.0.npz") as a, np.load(f"{two}.1.npz") as b, np.load(f"{one}.0.npz") as c:
        first, second, alone = dict(a), dict(b), dict(c)
    assert first.keys() == second.keys() == alone.keys()
    for key in first:
        np.testing.assert_array_equal(second[key], first[key], err_msg=key)  # the same run
        if key.startswith("stopped_"):
            continue  # where process 0 stopped depends on its clock
        if first[key].dtype.kind in "iubU":
            np.testing.assert_array_equal(alone[key], first[key], err_msg=key)
        else:
            np.testing.assert_allclose(alone[key], first[key], atol=2e-5, rtol=1e-4, err_msg=key)
    assert first["stopped_flag"] and 1 <= first["stopped_steps"] < 39  # stopped early, alike
    assert len(np.unique(first["decode_head"])) > 1  # the selection moved
    assert jax.device_count() == 1  # this process kept its one device


def test_shared_control_obeys_process_0():
    """In one process the broadcasts return process 0's own decisions: a paused gate asks
    again until a single step is granted, the chunk's size and selection are agreed, a
    prompt passes, a stop ends the next gate."""
    import threading

    from model import distributed
    from model.telemetry import RolloutControl

    local = RolloutControl(layer=1, head=2, sample=3)
    control = distributed.SharedControl(local)
    local.set_paused(True)
    threading.Timer(3 * distributed.POLL, local.step_once).start()
    assert control.gate() and control.paused and not control.stopped
    count, selection = distributed.agree(5, np.array([3, 1, 2], np.int32))
    assert count == 5 and selection.tolist() == [3, 1, 2]
    local.submit_prompt("a prompt")
    assert control.next_prompt() == "a prompt"
    local.stop()
    assert not control.gate() and control.stopped
