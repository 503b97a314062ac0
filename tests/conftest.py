"""Test-wide JAX settings: no silent rank promotion (nothing is broadcast by accident)."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
