"""The language model and what it stands on: config, layers, tokenizer, checkpoints, pretrained loading, sampling and rollouts, data batching, LoRA."""
