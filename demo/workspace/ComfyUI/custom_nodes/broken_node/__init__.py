import not_a_real_module_xyz  # no such module: ComfyUI logs the traceback and "(IMPORT FAILED)", and starts anyway

NODE_CLASS_MAPPINGS = {}
