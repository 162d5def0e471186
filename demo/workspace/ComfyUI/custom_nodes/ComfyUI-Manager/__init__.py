# Like a real custom node: load this folder's .env into the environment.
import os

from dotenv import load_dotenv

load_dotenv(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env"))
NODE_CLASS_MAPPINGS = {}
