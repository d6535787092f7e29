"""Stand-in of ``comfy.model_patcher.ModelPatcher``: holds a model with its load and offload devices;
``detach()`` runs the ``ON_DETACH`` callbacks and, with ``unpatch_all``, moves the weights to the offload
device, as ComfyUI's does."""

from comfy.patcher_extension import CallbacksMP


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.callbacks = {}

    def add_callback(self, call_type, callback):
        self.callbacks.setdefault(call_type, []).append(callback)

    def detach(self, unpatch_all=True):
        if unpatch_all:
            self.model.to(self.offload_device)
        for callback in self.callbacks.get(CallbacksMP.ON_DETACH, []):
            callback(self, unpatch_all)
        return self.model
