"""Training: state, losses, steps, the loop shared by every stage, checkpoints, metrics."""
