"""Qwen3-VL in JAX/Flax NNX with a telemetry-emitting KV-cache decoder. No UI imports."""
