"""``python -m jrnn``: build a 2-layer bidirectional LSTM, run it and print the seed's shapes."""

import jax

import jrnn


def main() -> None:
    batch, steps, features, hidden = 4, 12, 8, 16
    spec = jrnn.LSTM(features, hidden, num_layers=2, bidirectional=True)
    params = spec.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (batch, steps, features))
    output, (h_n, c_n) = jax.jit(spec.apply)(params, x)
    print(spec)
    print(f"x_{{1:n}}  (batch, n, w)                     {x.shape}")
    print(f"h_{{1:n}}  (batch, n, directions*d)          {output.shape}")
    print(f"h_n     (directions*layers, batch, d)     {h_n.shape}")
    print(f"c_n     (directions*layers, batch, d)     {c_n.shape}")


if __name__ == "__main__":
    main()
