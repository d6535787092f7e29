"""Stand-in of ComfyUI's ``folder_paths``: model folders by name (tests point ``models_dir`` at a tmp dir)."""

import os

models_dir = os.path.join(os.path.dirname(__file__), "models")
folder_names_and_paths = {}


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())
        return
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        paths.remove(full_folder_path)
    paths.insert(0 if is_default else len(paths), full_folder_path)


def get_folder_paths(folder_name):
    return folder_names_and_paths[folder_name][0][:]


def get_filename_list(folder_name):
    paths, extensions = folder_names_and_paths[folder_name]
    names = set()
    for folder in paths:
        for root, _dirs, files in os.walk(folder):
            names.update(os.path.relpath(os.path.join(root, f), folder) for f in files)
    return sorted(n for n in names if not extensions or os.path.splitext(n)[1].lower() in extensions)


def get_full_path(folder_name, filename):
    for folder in get_folder_paths(folder_name):
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    return None
