"""Robust Video Matting network modules (pure nn.Modules, no I/O)."""
