"""``ocnna-fast fetch``: the one command that downloads, and only what it is asked for."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.fetch import REMOTES, fetch
from ..data.places import cache_dir


def register(sub) -> None:
    fe = sub.add_parser(
        "fetch",
        help="download CIFAR archives or pretrained checkpoints (checked by sha256)",
        description="Downloads, only when asked, the canonical CIFAR archives and pretrained checkpoints, each checked by its pinned sha256.",
        epilog="example: ocnna-fast fetch cifar10 resnet56",
    )
    fe.add_argument("names", nargs="*", metavar="NAME", help=f"what to download: {', '.join(REMOTES)}")
    fe.add_argument("--list", action="store_true", help="list what can be fetched, with sizes and URLs")
    fe.add_argument("--data-dir", default=None, help="download here instead of the user cache")
    fe.add_argument(
        "--base-url",
        default=None,
        help="fetch the same file names from this folder URL instead (a mirror; $OCNNA_FETCH_BASE_URL)",
    )
    fe.add_argument("--no-progress", action="store_true", help="no progress bars")
    fe.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list or not args.names:
        place = Path(args.data_dir) if args.data_dir else cache_dir()
        print(f"downloads go to {place} (--data-dir to choose); what can be fetched:")
        for name, r in REMOTES.items():
            print(f"  {name:<10} {r.size / 1e6:7.1f} MB  -> {place / r.relpath}  from {r.url}")
        if not args.names and not args.list:
            print("usage: ocnna-fast fetch NAME [NAME ...]")
        return 0
    for name in args.names:
        path = fetch(name, args.data_dir, base_url=args.base_url, progress=not args.no_progress)
        print(f"{name}: {path}")
    return 0
