"""Reinforcement learning on the embedded task: GRPO objective, training loop, pretraining."""
