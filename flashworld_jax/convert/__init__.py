"""Weight import: released PyTorch / safetensors checkpoints → our NNX states → Orbax."""
