"""Tools beside the daemon: benchmarks (speed, live, several streams, quality), the GPU check, the soak and
chaos harnesses, and quantization."""
