"""Stand-in of ComfyUI's ``server``: ``PromptServer.instance.send_progress_text`` records (node_id, text)."""


class PromptServer:
    instance = None

    def __init__(self):
        self.texts = []
        PromptServer.instance = self

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((node_id, text))


PromptServer()
