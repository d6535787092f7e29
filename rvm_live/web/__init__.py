"""The web page served at the control address: static files, the MJPEG preview and image uploads."""

from .routes import MAX_UPLOAD, PREVIEW_FPS, handle, serves

__all__ = ["MAX_UPLOAD", "PREVIEW_FPS", "handle", "serves"]
