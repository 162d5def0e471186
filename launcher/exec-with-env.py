"""Start ComfyUI with a few keys of custom nodes' .env files in its process environment.

usage: exec-with-env.py --from FILE:KEY[,KEY...] [--from ...] -- main.py [args...]

Some libraries read a token from the environment (HF_TOKEN, for one). A manifest
entry lists such keys in "process_env". Their values must not pass through PM2,
which records every app's environment (pm2 jlist, pm2 show, its dump): they are
read here, from the node's 0600 .env with python-dotenv, just before exec.
"""
import os
import sys

from dotenv import dotenv_values


def main(argv):
    if "--" not in argv:
        sys.exit("exec-with-env.py: missing -- before the program")
    split = argv.index("--")
    options, program = argv[:split], argv[split + 1 :]
    if not program:
        sys.exit("exec-with-env.py: no program after --")
    for i in range(0, len(options), 2):
        if options[i] != "--from" or i + 1 >= len(options):
            sys.exit("exec-with-env.py: expected --from FILE:KEY[,KEY...]")
        path, _, keys = options[i + 1].rpartition(":")
        values = dotenv_values(path)
        for key in keys.split(","):
            value = values.get(key)
            if value is None:
                sys.exit(f"exec-with-env.py: {key} is not in {path}")
            os.environ[key] = value
    os.execv(sys.executable, [sys.executable, *program])


main(sys.argv[1:])
