"""The inference engine: the model on its device, uploads and downloads, recurrent state per stream.

``Engine`` runs B streams per network call, each with its own ``StreamState``; ``Matter`` and ``matting()``
(rvm_live.engine.matter) are single-stream users of it."""

from .core import Engine, StepOutput
from .state import StreamState, resize_state, state_sizes
from .transfer import Download

__all__ = ["Download", "Engine", "StepOutput", "StreamState", "resize_state", "state_sizes"]
