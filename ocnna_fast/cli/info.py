"""``ocnna-fast info``: what was built, whether a GPU is usable, where data is looked for."""

from __future__ import annotations

import argparse
import json

from .._native import build_info
from ..datapaths import data_places


def register(sub) -> None:
    i = sub.add_parser("info", help="print build information and where data is looked for")
    i.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps({**build_info(), "data_places": [str(p) for p in data_places()]}, indent=2))
    return 0
