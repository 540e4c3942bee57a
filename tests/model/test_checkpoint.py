"""Loading and saving checkpoint directories; every bad directory gives its one-line error."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from model import CheckpointError, load_pretrained, save_pretrained


@pytest.fixture
def copy(tiny_dir, tmp_path):
    """A writable copy of the tiny checkpoint and its tensors."""
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, path)
    return path, load_file(path / "model.safetensors")


def _error(path) -> str:
    with pytest.raises(CheckpointError) as e:
        load_pretrained(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_path(tmp_path):
    assert "no such directory" in _error(tmp_path / "nope")


def test_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _error(tmp_path / "file")


def test_no_config(copy):
    path, _ = copy
    (path / "config.json").unlink()
    assert "no config.json" in _error(path)


def test_wrong_model_type(copy):
    path, _ = copy
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "llama"
    (path / "config.json").write_text(json.dumps(config))
    msg = _error(path)
    assert "config.json" in msg and "'llama'" in msg


def test_no_tensor_file(copy):
    path, _ = copy
    (path / "model.safetensors").unlink()
    assert "no *.safetensors" in _error(path)


def test_missing_tensor(copy):
    path, tensors = copy
    del tensors["model.language_model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path / "model.safetensors")
    assert "missing tensor model.language_model.layers.1.mlp.up_proj.weight" in _error(path)


def test_misshaped_tensor(copy):
    path, tensors = copy
    tensors["model.visual.merger.linear_fc2.bias"] = np.zeros(7, np.float32)
    save_file(tensors, path / "model.safetensors")
    msg = _error(path)
    assert "model.visual.merger.linear_fc2.bias" in msg and "[7]" in msg


def test_truncated_file(copy):
    path, _ = copy
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    msg = _error(path)
    assert "model.safetensors" in msg and "safetensors" in msg


def test_index_names_a_missing_shard(copy):
    path, tensors = copy
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "model-00002-of-00002.safetensors" for k in tensors}})
    )
    assert "model-00002-of-00002.safetensors: no such file" in _error(path)


def test_sharded_checkpoint_with_old_names_loads(copy, tiny_model, reference):
    """Two shards plus an index, and transformers 4.x names (``model.layers``, ``visual``)."""
    path, tensors = copy
    old = {}
    for k, v in tensors.items():
        k = k.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        old[k] = v
    names = sorted(old)
    shards = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    (path / "model.safetensors").unlink()
    for file, keys in shards.items():
        save_file({k: old[k] for k in keys}, path / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    m = load_pretrained(path)
    ids = reference["text_ids"]
    np.testing.assert_array_equal(m.logits(ids), tiny_model.logits(ids))


def test_save_then_load_round_trips(tiny_model, tmp_path, tiny_dir):
    save_pretrained(tiny_model, tmp_path)
    ours = load_file(tmp_path / "model.safetensors")
    theirs = load_file(tiny_dir / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "qwen3_vl"


def test_bfloat16_load(tiny_dir, reference):
    import jax.numpy as jnp

    m = load_pretrained(tiny_dir, dtype=jnp.bfloat16)
    assert m.language_model.embed_tokens.weight[...].dtype == jnp.bfloat16
    logits = m.logits(reference["text_ids"])
    ref = reference["text_logits"]
    assert np.abs(logits - ref).max() < 0.05 * np.abs(ref).max()


def _param_bytes(m) -> list[int]:
    from flax import nnx

    return [v.get_value().nbytes for _, v in nnx.to_flat_state(nnx.state(m, nnx.Param))]


def test_loading_streams_one_tensor_at_a_time(tiny_dir):
    """The loader's own accounting: every parameter placed, and never more staged on the
    host at once than one parameter (a stacked one's blocks and their stack: twice its
    size), far from the whole model."""
    seen = []
    m = load_pretrained(tiny_dir, on_progress=seen.append)
    sizes = _param_bytes(m)
    last = seen[-1]
    assert last.bytes_loaded == last.bytes_total == sum(sizes)
    assert last.files_done == last.files == 1
    assert len(seen) == len(sizes) + 1  # one report per parameter, then the end
    assert [p.bytes_loaded for p in seen] == sorted(p.bytes_loaded for p in seen)
    assert max(sizes) <= last.largest_read <= 2 * max(sizes)
    assert last.largest_read < last.bytes_total / 10


def test_dtype_is_the_checkpoints_own_unless_asked(tiny_dir, tmp_path):
    import jax.numpy as jnp

    from model.checkpoint import checkpoint_dtype

    assert checkpoint_dtype(tiny_dir) == "float32"
    assert load_pretrained(tiny_dir).dtype == jnp.float32
    half = load_pretrained(tiny_dir, "bfloat16")
    assert half.dtype == jnp.bfloat16
    assert {v.dtype for v in jax_params(half)} == {jnp.dtype(jnp.bfloat16)}
    save_pretrained(half, tmp_path / "bf16")
    assert checkpoint_dtype(tmp_path / "bf16") == "bfloat16"
    assert load_pretrained(tmp_path / "bf16").dtype == jnp.bfloat16  # auto: as stored
    assert load_pretrained(tmp_path / "bf16", "float32").dtype == jnp.float32
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    del config["dtype"]  # no dtype in config.json: the tensors' own
    (tmp_path / "bf16" / "config.json").write_text(json.dumps(config))
    assert checkpoint_dtype(tmp_path / "bf16") == "bfloat16"


def jax_params(m):
    from flax import nnx

    return [v.get_value() for _, v in nnx.to_flat_state(nnx.state(m, nnx.Param))]
