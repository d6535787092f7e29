"""The inference engine: the model on its device, uploads and downloads, recurrent state per stream."""
