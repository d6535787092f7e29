"""Stand-in of ``comfy.model_management``: the device, the loaded-model list, unloading and the interrupt flag.

As in ComfyUI, the list holds ``LoadedModel``s with weak references only, a finalizer drops an entry whose
model died, and unloading pops entries by index after detaching them. ``torch_device`` is what
``get_torch_device()`` answers (tests set it); ``load_calls`` records every ``load_models_gpu`` call as
``(weak references to the models, kwargs)``."""

import threading
import weakref

import torch

torch_device = torch.device("cpu")
current_loaded_models = []  # LoadedModel, most recent first
load_calls = []


class LoadedModel:
    def __init__(self, patcher):
        self._model = weakref.ref(patcher)
        self.device = patcher.load_device
        self.real_model = weakref.ref(patcher.model)
        self.finalizer = weakref.finalize(patcher.model, cleanup_models)

    @property
    def model(self):
        return self._model()


def cleanup_models():
    for i in reversed(range(len(current_loaded_models))):
        if current_loaded_models[i].real_model() is None:
            current_loaded_models.pop(i)


def get_torch_device():
    return torch_device


def unet_offload_device():
    return torch.device("cpu")


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    kwargs = {"memory_required": memory_required, "force_full_load": force_full_load}
    load_calls.append(([weakref.ref(m) for m in models], kwargs))
    for patcher in models:
        for i, loaded in enumerate(current_loaded_models):
            if loaded.model is patcher:  # ComfyUI takes a loaded model out (detached, weights kept)...
                current_loaded_models.pop(i)
                loaded.finalizer.detach()
                patcher.detach(unpatch_all=False)
                break
        patcher.model.to(patcher.load_device)  # ...and loads it again
        current_loaded_models.insert(0, LoadedModel(patcher))


def loaded_models(only_currently_used=False):
    return [m.model for m in current_loaded_models]


def unload_all_models():
    """What "Unload models" and ``POST /free`` run: every model on the torch device is detached."""
    device = get_torch_device()
    unloaded = [i for i, m in enumerate(current_loaded_models) if m.device == device]
    for i in unloaded:
        current_loaded_models[i].model.detach()  # LoadedModel.model_unload
        current_loaded_models[i].finalizer.detach()
    for i in sorted(unloaded, reverse=True):
        current_loaded_models.pop(i)


class InterruptProcessingException(Exception):
    pass


_mutex = threading.RLock()
interrupt_processing = False


def interrupt_current_processing(value=True):
    global interrupt_processing
    with _mutex:
        interrupt_processing = value


def processing_interrupted():
    with _mutex:
        return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    with _mutex:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()
