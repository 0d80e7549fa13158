"""``ocnna-fast info``: what was built, whether a GPU is usable, where data is looked for."""

from __future__ import annotations

import argparse
import json

from .._native import build_info
from ..data.places import cache_dir, data_places


def register(sub) -> None:
    i = sub.add_parser(
        "info",
        help="print build information and where data is looked for",
        description="What was built (the CPU core's instruction set, the CUDA core), whether a GPU is usable, and where data is looked for.",
        epilog="example: ocnna-fast info",
    )
    i.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # every place searched, in order (first match wins), and whether it exists here
    places = [{"path": str(p), "exists": p.is_dir()} for p in data_places(existing_only=False)]
    print(json.dumps({**build_info(), "data_places": places, "cache": str(cache_dir())}, indent=2))
    return 0
