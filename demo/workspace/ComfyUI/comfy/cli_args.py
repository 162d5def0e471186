"""ComfyUI's command-line flags, for the stand-in (see ../main.py).

The flag set is ComfyUI's comfy/cli_args.py at its master of 2026-01-07 (618b803d), as listed in
test/fixtures/comfyui/cli-flags-2026-01.txt; types, nargs, defaults and mutually exclusive groups
follow the real definitions where they are known. Each flag is the first, literal string argument of
a `parser.add_argument(...)` or `<group>.add_argument(...)` call, so a launcher can list them with
Python's ast module without running this file. The stand-in's main.py calls parser.parse_args():
an unknown flag exits 2 with argparse's usage, a flag given twice keeps the last value, and argparse
accepts an unambiguous prefix (--lowv for --lowvram), as in the real ComfyUI.

main.py holds a verbatim copy of this file (for a main.py copied alone); test/standin.test.ts checks
that the two are the same.
"""
import argparse
import enum
import os


def is_valid_directory(path):
    """--user-directory must name a readable directory that exists (ComfyUI does not create it)."""
    if not os.path.exists(path):
        raise argparse.ArgumentTypeError(f"The path '{path}' does not exist.")
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"'{path}' is not a directory.")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"You do not have read permissions for '{path}'.")
    return path


class PerformanceFeature(enum.Enum):
    Fp16Accumulation = "fp16_accumulation"
    Fp8MatrixMultiplication = "fp8_matrix_mult"
    CublasOps = "cublas_ops"
    AutoTune = "autotune"


PREVIEW_METHODS = ["none", "auto", "latent2rgb", "taesd"]

parser = argparse.ArgumentParser()

# The server.
parser.add_argument("--listen", type=str, default="127.0.0.1", metavar="IP", nargs="?", const="0.0.0.0,::", help="The address(es) to listen on, comma-separated (default: 127.0.0.1); without a value: 0.0.0.0,:: (all IPv4 and IPv6).")
parser.add_argument("--port", type=int, default=8188, help="The port to listen on.")
parser.add_argument("--tls-keyfile", type=str, help="TLS key file (with --tls-certfile: serve https).")
parser.add_argument("--tls-certfile", type=str, help="TLS certificate file (with --tls-keyfile: serve https).")
parser.add_argument("--enable-cors-header", type=str, default=None, metavar="ORIGIN", nargs="?", const="*", help="Send CORS headers for ORIGIN (default '*').")
parser.add_argument("--max-upload-size", type=float, default=100, help="The largest upload, in MB.")

# Folders.
parser.add_argument("--base-directory", type=str, default=None, help="The base folder for models, custom_nodes, input, output, temp and user.")
parser.add_argument("--extra-model-paths-config", type=str, default=None, metavar="PATH", nargs="+", action="append", help="Load one or more extra_model_paths.yaml files.")
parser.add_argument("--output-directory", type=str, default=None, help="The output folder (overrides --base-directory).")
parser.add_argument("--temp-directory", type=str, default=None, help="The folder in which the temp folder lives (overrides --base-directory).")
parser.add_argument("--input-directory", type=str, default=None, help="The input folder (overrides --base-directory).")
parser.add_argument("--auto-launch", action="store_true", help="Open ComfyUI in the default browser.")
parser.add_argument("--disable-auto-launch", action="store_true", help="Do not open the browser.")

# Devices.
parser.add_argument("--cuda-device", type=int, default=None, metavar="DEVICE_ID", help="The CUDA device this instance uses (sets CUDA_VISIBLE_DEVICES): all others are hidden.")
parser.add_argument("--default-device", type=int, default=None, metavar="DEFAULT_DEVICE_ID", help="The default device; the others stay visible.")
cm_group = parser.add_mutually_exclusive_group()
cm_group.add_argument("--cuda-malloc", action="store_true", help="Use cudaMallocAsync.")
cm_group.add_argument("--disable-cuda-malloc", action="store_true", help="Do not use cudaMallocAsync.")

# Precision.
fp_group = parser.add_mutually_exclusive_group()
fp_group.add_argument("--force-fp32", action="store_true", help="Force fp32.")
fp_group.add_argument("--force-fp16", action="store_true", help="Force fp16.")

fpunet_group = parser.add_mutually_exclusive_group()
fpunet_group.add_argument("--fp32-unet", action="store_true", help="Run the diffusion model in fp32.")
fpunet_group.add_argument("--fp64-unet", action="store_true", help="Run the diffusion model in fp64.")
fpunet_group.add_argument("--bf16-unet", action="store_true", help="Run the diffusion model in bf16.")
fpunet_group.add_argument("--fp16-unet", action="store_true", help="Run the diffusion model in fp16.")

fpvae_group = parser.add_mutually_exclusive_group()
fpvae_group.add_argument("--fp16-vae", action="store_true", help="Run the VAE in fp16.")
fpvae_group.add_argument("--fp32-vae", action="store_true", help="Run the VAE in fp32.")
fpvae_group.add_argument("--bf16-vae", action="store_true", help="Run the VAE in bf16.")

parser.add_argument("--cpu-vae", action="store_true", help="Run the VAE on the CPU.")

fpte_group = parser.add_mutually_exclusive_group()
fpte_group.add_argument("--fp16-text-enc", action="store_true", help="Store text encoder weights in fp16.")
fpte_group.add_argument("--fp32-text-enc", action="store_true", help="Store text encoder weights in fp32.")
fpte_group.add_argument("--bf16-text-enc", action="store_true", help="Store text encoder weights in bf16.")

parser.add_argument("--force-channels-last", action="store_true", help="Use the channels-last format.")
parser.add_argument("--directml", type=int, nargs="?", metavar="DIRECTML_DEVICE", const=-1, help="Use torch-directml.")
parser.add_argument("--oneapi-device-selector", type=str, default=None, metavar="SELECTOR_STRING", help="The oneAPI device(s) this instance uses.")
parser.add_argument("--disable-ipex-optimize", action="store_true", help="Do not run ipex.optimize on models.")
parser.add_argument("--supports-fp8-compute", action="store_true", help="Act as if the device computes in fp8.")

# Previews and caches.
parser.add_argument("--preview-method", type=str, choices=PREVIEW_METHODS, default="none", metavar="[none,auto,latent2rgb,taesd]", help="The default preview method of sampler nodes.")
parser.add_argument("--preview-size", type=int, default=512, help="The largest preview size of sampler nodes.")

cache_group = parser.add_mutually_exclusive_group()
cache_group.add_argument("--cache-classic", action="store_true", help="Aggressive caching (the old style).")
cache_group.add_argument("--cache-lru", type=int, default=0, help="LRU caching of up to N node results.")
cache_group.add_argument("--cache-none", action="store_true", help="No caching: every node runs each time.")
cache_group.add_argument("--cache-ram", nargs="?", const=4.0, type=float, default=0, help="Cache while N GB of RAM stay free.")

# Attention.
attn_group = parser.add_mutually_exclusive_group()
attn_group.add_argument("--use-split-cross-attention", action="store_true", help="Split cross attention.")
attn_group.add_argument("--use-quad-cross-attention", action="store_true", help="Sub-quadratic cross attention.")
attn_group.add_argument("--use-pytorch-cross-attention", action="store_true", help="PyTorch 2.0 cross attention.")
attn_group.add_argument("--use-sage-attention", action="store_true", help="Sage attention.")
attn_group.add_argument("--use-flash-attention", action="store_true", help="FlashAttention.")

parser.add_argument("--disable-xformers", action="store_true", help="Do not use xformers.")

upcast = parser.add_mutually_exclusive_group()
upcast.add_argument("--force-upcast-attention", action="store_true", help="Always upcast attention.")
upcast.add_argument("--dont-upcast-attention", action="store_true", help="Never upcast attention.")

# ComfyUI-Manager.
parser.add_argument("--enable-manager", action="store_true", help="Enable the built-in ComfyUI-Manager.")
manager_group = parser.add_mutually_exclusive_group()
manager_group.add_argument("--disable-manager-ui", action="store_true", help="The manager without its UI.")
manager_group.add_argument("--enable-manager-legacy-ui", action="store_true", help="The manager's legacy UI.")

# Memory.
vram_group = parser.add_mutually_exclusive_group()
vram_group.add_argument("--gpu-only", action="store_true", help="Keep and run everything on the GPU.")
vram_group.add_argument("--highvram", action="store_true", help="Keep models in GPU memory after use.")
vram_group.add_argument("--normalvram", action="store_true", help="Normal VRAM use even if lowvram would be chosen.")
vram_group.add_argument("--lowvram", action="store_true", help="Split the unet to use less VRAM.")
vram_group.add_argument("--novram", action="store_true", help="When lowvram is not enough.")
vram_group.add_argument("--cpu", action="store_true", help="Use the CPU for everything (slow).")

parser.add_argument("--reserve-vram", type=float, default=None, help="GB of VRAM to leave to other software.")
parser.add_argument("--async-offload", nargs="?", const=2, type=int, default=None, metavar="NUM_STREAMS", help="Asynchronous weight offloading with NUM_STREAMS streams.")
parser.add_argument("--disable-async-offload", action="store_true", help="No asynchronous weight offloading.")
parser.add_argument("--force-non-blocking", action="store_true", help="Non-blocking tensor copies.")
parser.add_argument("--default-hashing-function", type=str, choices=["md5", "sha1", "sha256", "sha512"], default="sha256", help="The hash for duplicate file comparison.")
parser.add_argument("--disable-smart-memory", action="store_true", help="Offload to RAM instead of keeping models in VRAM.")
parser.add_argument("--deterministic", action="store_true", help="Deterministic (slower) PyTorch algorithms.")
parser.add_argument("--fast", nargs="*", type=PerformanceFeature, help="Untested optimizations: all without a value, or some of: fp16_accumulation fp8_matrix_mult cublas_ops autotune.")
parser.add_argument("--disable-pinned-memory", action="store_true", help="No pinned memory.")
parser.add_argument("--mmap-torch-files", action="store_true", help="mmap ckpt/pt files.")
parser.add_argument("--disable-mmap", action="store_true", help="Do not mmap safetensors.")

# Behaviour.
parser.add_argument("--dont-print-server", action="store_true", help="Do not print the server's address.")
parser.add_argument("--quick-test-for-ci", action="store_true", help="Exit once started (CI).")
parser.add_argument("--windows-standalone-build", action="store_true", help="The Windows standalone build's conveniences.")
parser.add_argument("--disable-metadata", action="store_true", help="Do not save prompt metadata in files.")
parser.add_argument("--disable-all-custom-nodes", action="store_true", help="Load no custom node.")
parser.add_argument("--whitelist-custom-nodes", type=str, nargs="+", default=[], help="Custom node folders to load despite --disable-all-custom-nodes.")
parser.add_argument("--disable-api-nodes", action="store_true", help="Load no API node.")
parser.add_argument("--multi-user", action="store_true", help="Per-user storage.")
parser.add_argument("--verbose", default="INFO", const="DEBUG", nargs="?", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="The logging level.")
parser.add_argument("--log-stdout", action="store_true", help="Log to stdout instead of stderr (the default).")
parser.add_argument("--user-directory", type=is_valid_directory, default=None, help="The user folder, an existing directory (overrides --base-directory).")
parser.add_argument("--enable-compress-response-body", action="store_true", help="Compress response bodies.")
parser.add_argument("--database-url", type=str, default=None, help="The database URL (default: sqlite in the user folder).")


def finish(args):
    """What ComfyUI's cli_args does after parsing."""
    if args.windows_standalone_build:
        args.auto_launch = True
    if args.disable_auto_launch:
        args.auto_launch = False
    if args.force_fp16:
        args.fp16_unet = True
    if args.fast is None:
        args.fast = set()
    elif args.fast == []:
        args.fast = set(PerformanceFeature)
    else:
        args.fast = set(args.fast)
    return args
