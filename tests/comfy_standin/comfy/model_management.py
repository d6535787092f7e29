"""Stand-in of ``comfy.model_management``: the device, the loaded-model list, unloading and the interrupt flag.

``torch_device`` is what ``get_torch_device()`` answers (tests set it); ``load_calls`` records every
``load_models_gpu`` call as ``(weak references to the models, kwargs)``."""

import threading
import weakref

import torch

torch_device = torch.device("cpu")
current_loaded_models = []  # ModelPatchers, most recent first (ComfyUI keeps LoadedModel wrappers)
load_calls = []


def get_torch_device():
    return torch_device


def unet_offload_device():
    return torch.device("cpu")


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    load_calls.append(([weakref.ref(m) for m in models], {"memory_required": memory_required, "force_full_load": force_full_load}))
    for patcher in models:
        if patcher not in current_loaded_models:
            patcher.model.to(patcher.load_device)
            current_loaded_models.insert(0, patcher)


def loaded_models(only_currently_used=False):
    return list(current_loaded_models)


def unload_all_models():
    """What "Unload models" and ``POST /free`` run: every model on the torch device is detached."""
    device = get_torch_device()
    for patcher in [m for m in current_loaded_models if m.load_device == device]:
        current_loaded_models.remove(patcher)
        patcher.detach()


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
