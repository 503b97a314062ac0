"""Side-by-side benchmarks of jrnn, torch.nn and flax.linen (see README.md)."""
