"""``rvm-live batch``: matte a library of clips, on this machine (a pool of worker processes, each with its
own model) or on a Ray cluster (``--ray``), splitting long clips into segments matted in parallel.

``plan`` (clips, outputs, segments, resume) → ``local`` / ``ray_backend`` (workers) → ``worker`` (one clip
through the daemon) → ``segments`` (windowed source, warm-up, lossless join) → ``job`` (summary).
"""
