"""The daemon's stages: capture (one thread per stream), inference (one thread for all streams) and the sink
workers (one thread per output, ``rvm_live.sink_worker``). Queues are the only boundary between them."""
