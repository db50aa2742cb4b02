"""The lab kit's benchmark: the simulated service under load, and the SDK's transports side by side.

`python -m labkit.lessons.bench` starts its own simulated service (`labkit.lab.services.start_sim`, profile `bench`),
drives it with a lean load client in a separate process at each concurrency level, and writes
`build/bench/sim_streams.json` and `build/bench/sdk_clients.json` plus a table on stdout. See
`labkit.lessons.bench.runner` for the orchestration and the JSON it writes,
`labkit.lessons.bench.client` for the load client
and why it runs in its own process.

Nothing here is imported by the rest of labkit: the package is a command, and importing it costs nothing.
"""
