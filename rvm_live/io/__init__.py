"""Where frames come from and go to: sources (camera, file, network, demo) and sinks (virtual camera, network
streams, files, window, preview), plug-ins found through one registry keyed by URL scheme or name."""
