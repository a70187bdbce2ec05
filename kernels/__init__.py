"""Custom kernels, one folder per op: api.py dispatches, reference.py is the XLA path (jax.md §7)."""
