"""``python -m tiny_models [--out FOLDER]``: build the tiny models (into the worker's model
cache unless told a folder) and print the time each took."""

import argparse
import json
import logging
from pathlib import Path

from tiny_models import COMPLETE_MARKER, build_tiny_models, ensure_tiny_models
from worker.config import get_settings

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--out", type=Path, help="build into this folder (default: the model cache)")
args = parser.parse_args()
logging.basicConfig(level=logging.INFO, format="%(message)s")
if args.out:
    print(json.dumps(build_tiny_models(args.out), indent=2))
else:
    folder = ensure_tiny_models(get_settings().model_cache_dir)
    print(folder)
    print((folder / COMPLETE_MARKER).read_text())
