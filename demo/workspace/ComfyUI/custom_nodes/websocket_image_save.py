"""A single-file custom node, as ComfyUI ships one in custom_nodes/ (this one needs nothing outside the stdlib).

ComfyUI imports a .py file in custom_nodes/ as a module of its own; its classes then appear in
GET /object_info with "python_module": "custom_nodes.websocket_image_save".
"""


class SaveImageWebsocket:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "api/image"

    def save_images(self, images):
        return {}


NODE_CLASS_MAPPINGS = {"SaveImageWebsocket": SaveImageWebsocket}
