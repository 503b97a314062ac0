"""Data parallelism: a step sharded over 4 (host) devices equals the same step on one device.

The 4 devices exist only if ``XLA_FLAGS`` is set before JAX is imported, so the check runs in a
fresh Python process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, pathlib
    import jax, numpy as np
    from jax.sharding import PartitionSpec
    from jrnn.training import runs, steps
    from jrnn.training.options import Options
    from jrnn.training.tasks import classify, lm
    from jrnn.training.tasks.classify import Classifier
    from jrnn.training.tasks.lm import LanguageModel

    assert jax.local_device_count() == 4, jax.devices()
    mesh = steps.data_mesh()
    rng = np.random.default_rng(0)

    def compare(model, state, batches):
        optimizer = steps.make_optimizer("adamw", 1e-2)
        step = steps.make_train_step(model, optimizer)
        results = []
        for m in (None, mesh):
            s = steps.shard(state, m)
            losses = []
            for i, batch in enumerate(batches):
                s, metrics = step(s, steps.shard(batch, m), jax.random.key(i))
                losses.append(float(metrics["loss"]))
            results.append((losses, s))
        (l1, s1), (l4, s4) = results
        np.testing.assert_allclose(l1, l4, rtol=2e-5)
        for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
        leaf = jax.tree.leaves(s4.params)[0]
        assert leaf.sharding.spec == PartitionSpec() and len(leaf.sharding.device_set) == 4
        return l1

    # classifier: padded, bucketed batches with dropout
    items = [(rng.integers(2, 20, size=rng.integers(2, 9)), int(rng.integers(0, 2)))
             for _ in range(24)]
    model = Classifier(vocab_size=20, num_classes=2, embed=4, hidden=8, cell="rnn", dropout=0.2)
    batches = list(classify.batches(items, 8, seed=0, buckets=(4, 8)))
    ids = steps.shard(batches[0], mesh)["ids"]
    assert ids.sharding.spec == PartitionSpec("data")
    assert {s.data.shape for s in ids.addressable_shards} == {(2, ids.shape[1])}
    optimizer = steps.make_optimizer("adamw", 1e-2)
    losses = compare(model, steps.init_state(model, optimizer, jax.random.key(0)), batches)

    # language model: truncated BPTT with the carry split along its batch axis
    stream = rng.integers(0, 7, size=8 * 5 * 6 + 1)
    language_model = LanguageModel(vocab_size=7, embed=4, hidden=8)
    state = steps.init_state(language_model, optimizer, jax.random.key(0), batch_size=8)
    compare(language_model, state, list(lm.batches(stream, 8, 6)))

    # evaluation over the mesh equals evaluation on one device
    eval_step = steps.make_eval_step(model)
    params = model.init(jax.random.key(1))
    one = steps.evaluate(eval_step, params, batches)
    four = steps.evaluate(eval_step, params, batches, mesh=mesh)
    np.testing.assert_allclose(one["loss"], four["loss"], rtol=1e-5)

    # a run whose batch does not split over the devices is a clear error
    try:
        runs.train("lm", {"text": None}, Options(batch_size=6), pathlib.Path("unused"))
    except ValueError as e:
        assert "not divisible by the 4 devices" in str(e), e
    else:
        raise AssertionError("batch size 6 on 4 devices was accepted")
    print("OK", json.dumps(losses))
    """
)


def test_four_device_step_equals_one_device_step():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, timeout=300
    )
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0 and "OK" in proc.stdout.decode(), out[-3000:]
