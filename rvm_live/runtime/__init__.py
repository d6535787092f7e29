"""The daemon at run time: sessions (one per stream), the capture and inference stages, the sink workers, the
quality governor and the stats. Queues are the only boundary between the threads."""
