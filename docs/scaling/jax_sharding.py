"""Soft ranks of a batch sharded over devices, with JAX: eager, jitted and inside shard_map.

softsort's batch axes are independent problems, so a batch sharded over a mesh stays
sharded: each device solves its own rows, and outputs and gradients keep the input's
sharding. On a CPU-only machine, ask XLA for several host devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python docs/scaling/jax_sharding.py [--rows-per-device 512]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import softsort


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows-per-device", type=int, default=512)
    args = parser.parse_args()
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("batch",))
    rows = args.rows_per_device * len(devices)
    x = np.random.default_rng(0).normal(size=(rows, 32)).astype(np.float32)
    x = jax.device_put(x, NamedSharding(mesh, P("batch", None)))  # rows split over the devices
    target = jnp.linspace(0.0, 31.0, 32)

    def loss(a):  # how far the soft ranks of each row are from 0, 1, ..., 31
        return jnp.mean((softsort.ranks(a, epsilon=0.05) - target) ** 2)

    eager = softsort.ranks(x)  # eager: the output is sharded like x
    value, grad = jax.jit(jax.value_and_grad(loss))(x)  # jitted, gradient sharded like x
    per_device = jax.shard_map(softsort.ranks, mesh=mesh, in_specs=P("batch"), out_specs=P("batch"))
    mapped = jax.jit(per_device)(x)  # explicit per-device program
    for name, a in (("eager", eager), ("gradient", grad), ("shard_map", mapped)):
        print(
            f"{name:10s} sharding {a.sharding.spec}, rows per device", [s.data.shape[0] for s in a.addressable_shards]
        )
    print("loss", float(value), "| eager and shard_map agree:", bool(jnp.allclose(eager, mapped, atol=1e-5)))


if __name__ == "__main__":
    main()
