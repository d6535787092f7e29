"""Stand-in of ``comfy.patcher_extension``: the callback names used by ``ModelPatcher``."""


class CallbacksMP:
    ON_CLONE = "on_clone"
    ON_LOAD = "on_load_after"
    ON_DETACH = "on_detach_after"
