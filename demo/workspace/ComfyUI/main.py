"""A stand-in for ComfyUI's main.py, for the demo and the tests: it starts in well under a second and
fails the way the real ComfyUI fails (recordings of the real one: test/fixtures/comfyui/).

- Flags: ComfyUI's own (comfy/cli_args.py), through parser.parse_args(): an unknown flag prints
  argparse's usage and `main.py: error: unrecognized arguments: ...` and exits 2; a flag given
  twice keeps the last value. --cuda-device N overwrites CUDA_VISIBLE_DEVICES (and
  HIP_VISIBLE_DEVICES, ASCEND_RT_VISIBLE_DEVICES) with N.
- Devices, without --cpu: where nvidia-smi answers (NVIDIA_SMI_PATH, else on PATH; the tests' stand-in
  nvidia-smi), the devices torch would see are what `nvidia-smi -L` and the GPU query list, filtered by
  CUDA_VISIBLE_DEVICES as CUDA filters them: indices (nvidia-smi's order) of GPUs not in MIG mode,
  GPU-/MIG- UUIDs whole or by a unique prefix, a GPU UUID of a GPU in MIG mode naming none; the first
  entry that names nothing ends the list; a device named twice leaves none. ComfyUI runs on the first (cuda:0): its name and memory are
  in the device lines and /system_stats. No device (CUDA_VISIBLE_DEVICES empty, or naming nothing)
  fails like torch does: `RuntimeError: No CUDA GPUs are available`, exit 1. Without nvidia-smi only
  the empty or negative value fails, and the memory is GPU_MEMORY_GB's.
- Output, all of it on stderr (stdout with --log-stdout): the device lines, a traceback and
  `Cannot import <path> module for custom nodes: <error>` for each custom node that fails to
  import, the `Import times for custom nodes:` block, `Starting server`, `To see the GUI go to:
  http://<address>:<port>` for each --listen address, and `Stopped server` on SIGINT (or SIGTERM,
  unlike the real one, which has no SIGTERM handler): exit 0.
- A port another process holds: after the full start, asyncio's bind error, exit 1:
  `OSError: [Errno 98] error while attempting to bind on address ('HOST', PORT): address already in use`.
- temp: emptied at start and removed at exit (ComfyUI's cleanup_temp): <ComfyUI>/temp, or
  <--temp-directory>/temp. --output-directory and --input-directory are created if missing;
  --user-directory must exist (argparse error otherwise, as in ComfyUI); --base-directory moves
  custom_nodes, input, output, temp and user.
- HTTP (one asyncio server per --listen address): GET / (the page), /system_stats, /queue,
  /prompt, /object_info[/<class>], /history, /embeddings, /extensions, shaped like ComfyUI's
  answers; any other path 404 as aiohttp answers. And GET /gpu-boot/nodes, the test report: per
  custom node whether its .env existed at start, its mode, a SHA-256 of each value (never a value),
  whether it loaded, and the error when it did not.
- STANDIN_START_DELAY_MS: sleep that long where the real one imports torch (seconds), before the
  device lines, so a test can make the start slow.
- The queue: POST /prompt queues a prompt, which runs for its extra_data.standin_seconds (0.05 s by
  default), one at a time; GET /queue shows queue_running and queue_pending as ComfyUI does.
  Failures on demand, while the file a variable names exists: STANDIN_HANG_FILE (requests are taken
  and never answered, the process lives), STANDIN_WORKER_DEAD_FILE (the worker stops: the running
  prompt stays running, the server still answers), STANDIN_FAIL_FILE (at start, after the device
  lines: `RuntimeError: CUDA error: an illegal memory access was encountered`, exit 1). `{port}` in
  such a path is the instance's own port. SIGINT cuts a running prompt, as ComfyUI does.

gpu-boot's tests copy this file and comfy/ into their workspaces (test/helpers/boot.ts), as a
ComfyUI checkout has them.
"""
import argparse
import asyncio
import csv
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import traceback
import uuid

from dotenv import dotenv_values

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_VERSION = "2.5.1+cu124"

def load_cli_args():
    # As ComfyUI's main.py: its flags come from the checkout's comfy/cli_args.py.
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import comfy.cli_args

    return comfy.cli_args


cli_args = load_cli_args()
args = cli_args.finish(cli_args.parser.parse_args())

logging.basicConfig(format="%(message)s", level=getattr(logging, args.verbose), stream=sys.stdout if args.log_stdout else sys.stderr)


def exists_env_file(variable):
    """Whether the file the variable names exists; `{port}` in it is this instance's port (one instance of several)."""
    path = os.environ.get(variable)
    return bool(path) and os.path.exists(path.replace("{port}", str(args.port)))

# What the launcher gave this process, before ComfyUI's own changes.
received_env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GPU_INDEX", "GPU_UUID", "GPU_DEVICE", "GPU_SLOT", "GPU_MODEL", "GPU_MEMORY_GB")}
# The arguments the stand-in's first version did not know: all but --listen, --port, --cuda-device, --cpu.
_known = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
_known.add_argument("--listen", nargs="?")
_known.add_argument("--port")
_known.add_argument("--cuda-device")
_known.add_argument("--cpu", action="store_true")
extra_args = _known.parse_known_args()[1]

if args.cuda_device is not None:
    for variable in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"):
        os.environ[variable] = str(args.cuda_device)
    logging.info("Set cuda device to: {}".format(args.cuda_device))

# Where the real one spends seconds: importing torch and starting model management.
if os.environ.get("STANDIN_START_DELAY_MS"):
    time.sleep(float(os.environ["STANDIN_START_DELAY_MS"]) / 1000)


# --- model management: the device lines -------------------------------------------------------

def memory():
    """(total, available) RAM in bytes."""
    info = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                info[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    total = info.get("MemTotal", 16 * 1024 ** 3)
    return total, info.get("MemAvailable", total // 2)


def machine_devices():
    """Every CUDA device of the machine, from nvidia-smi: whole GPUs and MIG devices; None without nvidia-smi."""
    smi = os.environ.get("NVIDIA_SMI_PATH") or shutil.which("nvidia-smi")
    if not smi:
        return None
    query = ["--query-gpu=index,name,memory.total,uuid,driver_version,mig.mode.current", "--format=csv,noheader,nounits"]
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
        queried = subprocess.run([smi, *query], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0 or queried.returncode != 0:
        return None
    memory = {}
    for row in csv.reader(queried.stdout.splitlines()):
        if len(row) >= 4:
            memory[row[3].strip()] = int(row[2].strip())
    devices = []
    gpu = None
    for line in listed.stdout.splitlines():
        found = re.match(r"^GPU (\d+): (.+) \(UUID: (GPU-[^)\s]+)\)$", line)
        if found:
            gpu = {"index": int(found.group(1)), "name": found.group(2), "uuid": found.group(3), "mig": False}
            devices.append(gpu)
            continue
        found = re.match(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)\s]+)\)$", line)
        if found and gpu is not None:
            gpu["mig"] = True
            gb = re.match(r"^\d+g\.(\d+)gb", found.group(1))
            devices.append({"index": None, "name": f"{gpu['name']} MIG {found.group(1)}", "uuid": found.group(3), "mig": True, "parent": gpu["uuid"], "memoryMiB": int(gb.group(1)) * 1024 if gb else 0})
    for device in devices:
        device.setdefault("memoryMiB", memory.get(device["uuid"], 0))
    # A GPU in MIG mode is no CUDA device itself: its MIG devices are.
    return [d for d in devices if not (d["index"] is not None and d["mig"])], devices


def visible_cuda_devices(visible, listed):
    """CUDA_VISIBLE_DEVICES as CUDA applies it: entries in order; the first that names nothing ends the list."""
    usable, everything = listed
    if visible is None:
        return usable
    chosen = []
    for entry in visible.split(","):
        entry = entry.strip()
        if entry.isdigit():
            match = [d for d in usable if d["index"] == int(entry)]
        elif entry.upper().startswith(("GPU-", "MIG-")):
            exact = [d for d in everything if d["uuid"].lower() == entry.lower()]
            match = exact or [d for d in everything if d["uuid"].lower().startswith(entry.lower())]
            # A GPU in MIG mode named by UUID is no device; nor is a prefix that two devices share.
            match = [d for d in match if d in usable] if len(match) == 1 else []
        else:
            match = []
        if len(match) != 1:
            break
        # A device named twice: torch (and CUDA) see none at all.
        if match[0] in chosen:
            return []
        chosen.append(match[0])
    return chosen


def get_torch_device():
    if args.cpu:
        return "cpu", []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = machine_devices()
    if listed is None:
        # torch sees no device when CUDA_VISIBLE_DEVICES is empty or starts with an invalid index.
        if visible is not None and (visible.strip() == "" or visible.split(",")[0].strip().startswith("-")):
            raise RuntimeError("No CUDA GPUs are available")
        return "cuda:0", []
    devices = visible_cuda_devices(visible, listed)
    if not devices:
        raise RuntimeError("No CUDA GPUs are available")
    # Only the visible devices exist for torch, numbered from 0: ComfyUI runs on the first.
    return "cuda:0", devices


DEVICE, CUDA_DEVICES = get_torch_device()
RAM_TOTAL, _ = memory()
if DEVICE == "cpu":
    VRAM_TOTAL = RAM_TOTAL
    DEVICE_NAME = "cpu"
    VRAM_STATE = "DISABLED"
    VAE_DTYPE = "torch.float32"
    ATTENTION = "Using split optimization for cross attention" if args.use_split_cross_attention else "Using sub quadratic optimization for cross attention, if you have memory or speed issues try using: --use-split-cross-attention"
else:
    try:
        VRAM_TOTAL = CUDA_DEVICES[0]["memoryMiB"] * 1024 ** 2 if CUDA_DEVICES else int(float(os.environ.get("GPU_MEMORY_GB") or 24) * 1024 ** 3)
    except ValueError:
        VRAM_TOTAL = 24 * 1024 ** 3
    allocator = "native" if args.disable_cuda_malloc else "cudaMallocAsync"
    DEVICE_NAME = f"{DEVICE} {CUDA_DEVICES[0]['name'] if CUDA_DEVICES else os.environ.get('GPU_MODEL') or 'NVIDIA Stand-in GPU'} : {allocator}"
    VRAM_STATE = "LOW_VRAM" if args.lowvram else "NO_VRAM" if args.novram else "HIGH_VRAM" if args.highvram or args.gpu_only else "NORMAL_VRAM"
    VAE_DTYPE = "torch.float32" if args.fp32_vae or args.cpu_vae else "torch.float16" if args.fp16_vae else "torch.bfloat16"
    ATTENTION = "Using pytorch attention"

logging.info("Total VRAM {:0.0f} MB, total RAM {:0.0f} MB".format(VRAM_TOTAL / (1024 * 1024), RAM_TOTAL / (1024 * 1024)))
logging.info("pytorch version: {}".format(TORCH_VERSION))
logging.info(f"Set vram state to: {VRAM_STATE}")
logging.info("Device: {}".format(DEVICE_NAME))
logging.info("VAE dtype: {}".format(VAE_DTYPE))
logging.info(ATTENTION)
if exists_env_file("STANDIN_FAIL_FILE"):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


# --- folders ------------------------------------------------------------------------------------

BASE = os.path.abspath(args.base_directory) if args.base_directory else HERE
folders = {
    "temp": os.path.join(BASE, "temp"),
    "output": os.path.join(BASE, "output"),
    "input": os.path.join(BASE, "input"),
    "user": os.path.join(BASE, "user"),
}
CUSTOM_NODES = os.path.join(BASE, "custom_nodes")


def cleanup_temp():
    if os.path.exists(folders["temp"]):
        shutil.rmtree(folders["temp"], ignore_errors=True)


if args.temp_directory:
    folders["temp"] = os.path.join(os.path.abspath(args.temp_directory), "temp")
    logging.info(f"Setting temp directory to: {folders['temp']}")
cleanup_temp()
try:
    os.makedirs(folders["temp"], exist_ok=True)
except OSError:
    pass

# extra_model_paths.yaml (next to main.py) and --extra-model-paths-config: a missing file is fatal.
extra_model_paths = os.path.join(HERE, "extra_model_paths.yaml")
for config_path in ([extra_model_paths] if os.path.isfile(extra_model_paths) else []) + list(itertools.chain(*(args.extra_model_paths_config or []))):
    with open(config_path, "r", encoding="utf-8") as stream:
        stream.read()
    logging.info(f"Loading extra model paths from {config_path}")


# --- custom nodes -------------------------------------------------------------------------------

BUILTIN_NODES = json.loads(r'''{
 "CheckpointLoaderSimple": {
  "input": {
   "required": {
    "ckpt_name": [
     []
    ]
   }
  },
  "output": [
   "MODEL",
   "CLIP",
   "VAE"
  ],
  "output_is_list": [
   false,
   false,
   false
  ],
  "output_name": [
   "MODEL",
   "CLIP",
   "VAE"
  ],
  "name": "CheckpointLoaderSimple",
  "display_name": "Load Checkpoint",
  "description": "",
  "category": "loaders",
  "output_node": false
 },
 "CLIPTextEncode": {
  "input": {
   "required": {
    "text": [
     "STRING",
     {
      "multiline": true,
      "dynamicPrompts": true
     }
    ],
    "clip": [
     "CLIP"
    ]
   }
  },
  "output": [
   "CONDITIONING"
  ],
  "output_is_list": [
   false
  ],
  "output_name": [
   "CONDITIONING"
  ],
  "name": "CLIPTextEncode",
  "display_name": "CLIP Text Encode (Prompt)",
  "description": "",
  "category": "conditioning",
  "output_node": false
 },
 "KSampler": {
  "input": {
   "required": {
    "model": [
     "MODEL"
    ],
    "seed": [
     "INT",
     {
      "default": 0,
      "min": 0,
      "max": 18446744073709551615
     }
    ],
    "steps": [
     "INT",
     {
      "default": 20,
      "min": 1,
      "max": 10000
     }
    ],
    "cfg": [
     "FLOAT",
     {
      "default": 8.0,
      "min": 0.0,
      "max": 100.0,
      "step": 0.1,
      "round": 0.01
     }
    ],
    "sampler_name": [
     [
      "euler",
      "euler_ancestral",
      "heun",
      "heunpp2",
      "dpm_2",
      "dpm_2_ancestral",
      "lms",
      "dpm_fast",
      "dpm_adaptive",
      "dpmpp_2s_ancestral",
      "dpmpp_sde",
      "dpmpp_sde_gpu",
      "dpmpp_2m",
      "dpmpp_2m_sde",
      "dpmpp_2m_sde_gpu",
      "dpmpp_3m_sde",
      "dpmpp_3m_sde_gpu",
      "ddpm",
      "lcm",
      "ddim",
      "uni_pc",
      "uni_pc_bh2"
     ]
    ],
    "scheduler": [
     [
      "normal",
      "karras",
      "exponential",
      "sgm_uniform",
      "simple",
      "ddim_uniform"
     ]
    ],
    "positive": [
     "CONDITIONING"
    ],
    "negative": [
     "CONDITIONING"
    ],
    "latent_image": [
     "LATENT"
    ],
    "denoise": [
     "FLOAT",
     {
      "default": 1.0,
      "min": 0.0,
      "max": 1.0,
      "step": 0.01
     }
    ]
   }
  },
  "output": [
   "LATENT"
  ],
  "output_is_list": [
   false
  ],
  "output_name": [
   "LATENT"
  ],
  "name": "KSampler",
  "display_name": "KSampler",
  "description": "",
  "category": "sampling",
  "output_node": false
 },
 "EmptyLatentImage": {
  "input": {
   "required": {
    "width": [
     "INT",
     {
      "default": 512,
      "min": 16,
      "max": 16384,
      "step": 8
     }
    ],
    "height": [
     "INT",
     {
      "default": 512,
      "min": 16,
      "max": 16384,
      "step": 8
     }
    ],
    "batch_size": [
     "INT",
     {
      "default": 1,
      "min": 1,
      "max": 4096
     }
    ]
   }
  },
  "output": [
   "LATENT"
  ],
  "output_is_list": [
   false
  ],
  "output_name": [
   "LATENT"
  ],
  "name": "EmptyLatentImage",
  "display_name": "Empty Latent Image",
  "description": "",
  "category": "latent",
  "output_node": false
 },
 "VAEDecode": {
  "input": {
   "required": {
    "samples": [
     "LATENT"
    ],
    "vae": [
     "VAE"
    ]
   }
  },
  "output": [
   "IMAGE"
  ],
  "output_is_list": [
   false
  ],
  "output_name": [
   "IMAGE"
  ],
  "name": "VAEDecode",
  "display_name": "VAE Decode",
  "description": "",
  "category": "latent",
  "output_node": false
 },
 "SaveImage": {
  "input": {
   "required": {
    "images": [
     "IMAGE"
    ],
    "filename_prefix": [
     "STRING",
     {
      "default": "ComfyUI"
     }
    ]
   },
   "hidden": {
    "prompt": "PROMPT",
    "extra_pnginfo": "EXTRA_PNGINFO"
   }
  },
  "output": [],
  "output_is_list": [],
  "output_name": [],
  "name": "SaveImage",
  "display_name": "Save Image",
  "description": "",
  "category": "image",
  "output_node": true
 },
 "LoadImage": {
  "input": {
   "required": {
    "image": [
     [
      "example.png"
     ],
     {
      "image_upload": true
     }
    ]
   }
  },
  "output": [
   "IMAGE",
   "MASK"
  ],
  "output_is_list": [
   false,
   false
  ],
  "output_name": [
   "IMAGE",
   "MASK"
  ],
  "name": "LoadImage",
  "display_name": "Load Image",
  "description": "",
  "category": "image",
  "output_node": false
 },
 "PreviewImage": {
  "input": {
   "required": {
    "images": [
     "IMAGE"
    ]
   },
   "hidden": {
    "prompt": "PROMPT",
    "extra_pnginfo": "EXTRA_PNGINFO"
   }
  },
  "output": [],
  "output_is_list": [],
  "output_name": [],
  "name": "PreviewImage",
  "display_name": "Preview Image",
  "description": "",
  "category": "image",
  "output_node": true
 }
}''')
for _info in BUILTIN_NODES.values():
    _info["python_module"] = "nodes"

CUSTOM_CLASSES = {}  # class name -> (class, python_module)
CUSTOM_DISPLAY_NAMES = {}


def load_custom_node(module_path):
    """ComfyUI's nodes.load_custom_node: (loaded, error)."""
    module_name = os.path.basename(module_path)
    if os.path.isfile(module_path):
        module_name = os.path.splitext(module_name)[0]
    try:
        logging.debug("Trying to load custom node {}".format(module_path))
        if os.path.isfile(module_path):
            module_spec = importlib.util.spec_from_file_location(module_name, module_path)
        else:
            module_spec = importlib.util.spec_from_file_location(module_name, os.path.join(module_path, "__init__.py"))
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if mappings is None:
            logging.warning(f"Skip {module_path} module for custom nodes due to the lack of NODE_CLASS_MAPPINGS.")
            return False, "no NODE_CLASS_MAPPINGS"
        for name, node_cls in mappings.items():
            if name not in BUILTIN_NODES:
                CUSTOM_CLASSES[name] = (node_cls, f"custom_nodes.{module_name}")
        CUSTOM_DISPLAY_NAMES.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})
        return True, None
    except Exception as e:
        logging.warning(traceback.format_exc())
        logging.warning(f"Cannot import {module_path} module for custom nodes: {e}")
        return False, str(e)


def env_report(folder):
    """What the tests read: whether the node's .env existed at start, its mode, a hash per value."""
    env_path = os.path.join(folder, ".env")
    entry = {"envFile": os.path.exists(env_path)}
    if entry["envFile"]:
        entry["mode"] = oct(os.stat(env_path).st_mode & 0o777)
        values = dotenv_values(env_path)
        entry["keys"] = sorted(values)
        entry["sha256"] = {k: hashlib.sha256((v or "").encode()).hexdigest() for k, v in values.items()}
    return entry


nodes_report = {}
node_import_times = []
for possible_module in sorted(os.listdir(CUSTOM_NODES)) if os.path.isdir(CUSTOM_NODES) else []:
    module_path = os.path.join(CUSTOM_NODES, possible_module)
    if possible_module == "__pycache__":
        continue
    if os.path.isfile(module_path) and os.path.splitext(module_path)[1] != ".py":
        continue
    if module_path.endswith(".disabled"):
        continue
    entry = env_report(module_path) if os.path.isdir(module_path) else {"envFile": False}
    entry["path"] = module_path
    nodes_report[possible_module] = entry
    if args.disable_all_custom_nodes and possible_module not in args.whitelist_custom_nodes:
        logging.info(f"Skipping {possible_module} due to disable_all_custom_nodes and whitelist_custom_nodes")
        entry.update(loaded=False, skipped=True)
        continue
    time_before = time.perf_counter()
    loaded, error = load_custom_node(module_path)
    node_import_times.append((time.perf_counter() - time_before, module_path, loaded))
    entry["loaded"] = loaded
    if error is not None:
        entry["error"] = error

if len(node_import_times) > 0:
    logging.info("\nImport times for custom nodes:")
    for n in sorted(node_import_times):
        import_message = "" if n[2] else " (IMPORT FAILED)"
        logging.info("{:6.1f} seconds{}: {}".format(n[0], import_message, n[1]))
    logging.info("")

for name, flag in (("output", args.output_directory), ("input", args.input_directory), ("user", args.user_directory)):
    if flag:
        folders[name] = os.path.abspath(flag)
        logging.info(f"Setting {name} directory to: {folders[name]}")
    try:
        os.makedirs(folders[name], exist_ok=True)
    except OSError:
        pass

if args.quick_test_for_ci:
    sys.exit(0)


# --- the server ---------------------------------------------------------------------------------

def node_info(name):
    if name in BUILTIN_NODES:
        return BUILTIN_NODES[name]
    node_cls, python_module = CUSTOM_CLASSES[name]
    output = list(node_cls.RETURN_TYPES)
    return {
        "input": node_cls.INPUT_TYPES(),
        "output": output,
        "output_is_list": list(getattr(node_cls, "OUTPUT_IS_LIST", [False] * len(output))),
        "output_name": list(getattr(node_cls, "RETURN_NAMES", output)),
        "name": name,
        "display_name": CUSTOM_DISPLAY_NAMES.get(name, name),
        "description": getattr(node_cls, "DESCRIPTION", ""),
        "category": getattr(node_cls, "CATEGORY", "sd"),
        "output_node": getattr(node_cls, "OUTPUT_NODE", False) is True,
        "python_module": python_module,
    }


def object_info():
    out = {}
    for name in itertools.chain(BUILTIN_NODES, CUSTOM_CLASSES):
        try:
            out[name] = node_info(name)
        except Exception:
            logging.error(f"[ERROR] An error occurred while retrieving information for the '{name}' node.")
            logging.error(traceback.format_exc())
    return out


def system_stats():
    if DEVICE == "cpu":
        total, free = memory()
        device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": free, "torch_vram_total": total, "torch_vram_free": free}
    else:
        device = {"name": DEVICE_NAME, "type": "cuda", "index": 0, "vram_total": VRAM_TOTAL, "vram_free": VRAM_TOTAL - 512 * 1024 ** 2, "torch_vram_total": 0, "torch_vram_free": 0}
    return {
        "system": {"os": os.name, "python_version": sys.version, "embedded_python": os.path.split(os.path.split(sys.executable)[0])[1] == "python_embeded"},
        "devices": [device],
    }


def json_safe(value):
    if isinstance(value, (set, frozenset, list, tuple)):
        items = [json_safe(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        return value.value
    return value


def report():
    return {
        "pid": os.getpid(),
        "port": args.port,
        "listen": args.listen.split(","),
        "cudaDevice": args.cuda_device,
        "cpu": args.cpu,
        "device": DEVICE,
        "extraArgs": extra_args,
        "args": json_safe(vars(args)),
        "env": received_env,
        "visibleDevices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        # The devices torch sees (from nvidia-smi, filtered as CUDA filters): cuda:0 is the first.
        "cudaDevices": [{"uuid": d["uuid"], "name": d["name"], "memoryMiB": d["memoryMiB"]} for d in CUDA_DEVICES],
        "folders": dict(folders),
        "customNodes": CUSTOM_NODES,
        "nodes": nodes_report,
    }


INDEX = b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ComfyUI</title></head><body><p>ComfyUI stand-in</p></body></html>\n"
prompt_number = itertools.count()


def respond_json(value, status=200):
    return status, "application/json; charset=utf-8", json.dumps(value).encode()


# The queue, as ComfyUI keeps it: one prompt runs at a time, the rest wait. Each entry is
# [number, prompt_id, prompt, extra_data, outputs_to_execute]. A prompt "runs" for
# extra_data.standin_seconds (0.05 by default); STANDIN_WORKER_DEAD_FILE, once it exists, stops the
# worker as a dead executor would: the running prompt stays in queue_running, the server answers.
queue_running = []
queue_pending = []


async def worker():
    while True:
        if queue_pending and not queue_running and not exists_env_file("STANDIN_WORKER_DEAD_FILE"):
            queue_running.append(queue_pending.pop(0))
        if queue_running and not exists_env_file("STANDIN_WORKER_DEAD_FILE"):
            entry = queue_running[0]
            started = entry[3].setdefault("standin_started", time.monotonic())
            if time.monotonic() - started >= float(entry[3].get("standin_seconds", 0.05)):
                queue_running.pop(0)
                logging.info("Prompt executed in {:.2f} seconds".format(time.monotonic() - started))
        await asyncio.sleep(0.02)


def post_prompt(body):
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), dict):
        return respond_json({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}, "node_errors": {}}, 400)
    prompt_id, number = str(uuid.uuid4()), next(prompt_number)
    extra = data.get("extra_data") if isinstance(data.get("extra_data"), dict) else {}
    queue_pending.append([number, prompt_id, data["prompt"], dict(extra), []])
    return respond_json({"prompt_id": prompt_id, "number": number, "node_errors": {}})


def queue_view(entries):
    return [[e[0], e[1], e[2], {k: v for k, v in e[3].items() if k != "standin_started"}, e[4]] for e in entries]


GET_ROUTES = {
    "/": lambda: (200, "text/html", INDEX),
    "/system_stats": lambda: respond_json(system_stats()),
    "/queue": lambda: respond_json({"queue_running": queue_view(queue_running), "queue_pending": queue_view(queue_pending)}),
    "/prompt": lambda: respond_json({"exec_info": {"queue_remaining": len(queue_running) + len(queue_pending)}}),
    "/object_info": lambda: respond_json(object_info()),
    "/history": lambda: respond_json({}),
    "/embeddings": lambda: respond_json([]),
    "/extensions": lambda: respond_json([]),
    "/gpu-boot/nodes": lambda: respond_json(report()),
}
POST_ROUTES = {"/prompt": post_prompt}


def route(method, path, body):
    if method in ("GET", "HEAD"):
        if path in GET_ROUTES:
            return GET_ROUTES[path]()
        if path.startswith("/object_info/"):
            name = path[len("/object_info/"):]
            return respond_json({name: node_info(name)} if name in BUILTIN_NODES or name in CUSTOM_CLASSES else {})
    elif method == "POST" and path in POST_ROUTES:
        return POST_ROUTES[path](body)
    if path in GET_ROUTES or path in POST_ROUTES or path.startswith("/object_info/"):
        return 405, "text/plain; charset=utf-8", b"405: Method Not Allowed"
    return 404, "text/plain; charset=utf-8", b"404: Not Found"


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


async def handle(reader, writer):
    """One HTTP/1.1 request per connection (Connection: close), like a small aiohttp."""
    try:
        request_line = await reader.readline()
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3:
            return
        method, target = parts[0].upper(), parts[1]
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await reader.readexactly(length) if length > 0 else b""
        # A hung server (STANDIN_HANG_FILE exists): the connection is taken, no answer comes, the process lives.
        while exists_env_file("STANDIN_HANG_FILE"):
            await asyncio.sleep(0.05)
        try:
            status, content_type, payload = route(method, target.split("?", 1)[0], body)
        except Exception:
            logging.error("Error handling request\n" + traceback.format_exc())
            status, content_type, payload = 500, "text/plain; charset=utf-8", b"500 Internal Server Error\n\nServer got itself in trouble"
        headers = [
            f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload)}",
            "Server: Python/{}.{} aiohttp/3.9.5".format(*sys.version_info[:2]),
            "Connection: close",
        ]
        if target.split("?", 1)[0] == "/":
            headers.append("Cache-Control: no-cache")
        if args.enable_cors_header:
            headers += [f"Access-Control-Allow-Origin: {args.enable_cors_header}", "Access-Control-Allow-Methods: POST, GET, DELETE, PUT, OPTIONS", "Access-Control-Allow-Headers: Content-Type, Authorization", "Access-Control-Allow-Credentials: true"]
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else payload))
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def run(addresses, port, verbose=True):
    ssl_ctx = None
    scheme = "http"
    if args.tls_keyfile and args.tls_certfile:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(certfile=args.tls_certfile, keyfile=args.tls_keyfile)
        scheme = "https"
    servers = []
    for address in addresses:
        # asyncio's create_server, as aiohttp's TCPSite uses it: the same bind error, word for word.
        servers.append(await asyncio.start_server(handle, address, port, ssl=ssl_ctx))
        address_print = "[{}]".format(address) if ":" in address else address
        if verbose:
            logging.info("Starting server\n")
            logging.info("To see the GUI go to: {}://{}:{}".format(scheme, address_print, port))
    await worker()


def sigterm(_signum, _frame):
    # Stop as on Ctrl-C (the real ComfyUI does not catch SIGTERM: it dies at once, its temp kept).
    raise KeyboardInterrupt


if __name__ == "__main__":
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    signal.signal(signal.SIGTERM, sigterm)
    try:
        loop.run_until_complete(run(args.listen.split(","), args.port, verbose=not args.dont_print_server))
    except KeyboardInterrupt:
        logging.info("\nStopped server")
    cleanup_temp()
