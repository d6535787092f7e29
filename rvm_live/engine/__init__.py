"""The inference engine: the model on its device, recurrent state per stream, and the render of its results.

``Engine.new_state()`` gives a stream its :class:`StreamState`; ``Engine.infer(frames, states)`` runs the
network for B streams and returns a :class:`Matte`; ``Engine.render(matte, plans)`` blends each frame as its
stream's :class:`RenderPlan` says and brings it to the host. ``Matter`` and ``matting()``
(rvm_live.engine.matter) are single-stream users of it."""

from .core import Engine
from .render import Matte, Picture, RenderPlan
from .state import StreamState, auto_downsample_ratio, recommended_ratio, resize_state, state_sizes

__all__ = ["Engine", "Matte", "Picture", "RenderPlan", "StreamState", "auto_downsample_ratio", "recommended_ratio",
           "resize_state", "state_sizes"]
