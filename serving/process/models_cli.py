"""`latent-models`: look after a model repository on disk (no server involved).

- ``latent-models list [--repository DIR]``: every model folder, its version policy and
  every version with whether its model.json and graphs check out (what a server would load,
  before it loads anything).
- ``latent-models publish SOURCE [--repository DIR] [--name NAME]``: copy a model folder in
  as the model's next version, atomically (latentserve.publish), so a server polling the
  repository picks up a complete version or none.

``--repository`` defaults to LATENTSERVE_MODELS_DIR, else the shipped models, as
latent-serve's --models-dir does. Exit 0 when done, 1 when something listed is broken or the
publish was refused, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from latentserve.manifest import ManifestError, load_model_folder
from latentserve.publish import publish
from serving.core.importer import ImportRefused
from serving.core.repository import scan_repository
from serving.process.import_command import add_import_command
from serving.process.settings import ENV_PREFIX, SHIPPED_MODELS_DIR

PROG = "latent-models"


def _default_repository() -> Path:
    return Path(os.environ.get(f"{ENV_PREFIX}MODELS_DIR") or SHIPPED_MODELS_DIR)


def _cmd_list(args: argparse.Namespace) -> int:
    root: Path = args.repository
    if not root.is_dir():
        print(f"{PROG}: {root} is not a folder", file=sys.stderr)
        return 1
    broken = 0
    rows = [("NAME", "VERSION", "CHECK", "POLICY", "FOLDER")]
    problems = []
    for found in scan_repository(root).values():
        policy = found.config.version_policy
        chosen = policy.choose(list(found.versions))
        if found.error:
            broken += 1
            problems.append(f"{found.name}: {found.error}")
        if not found.versions:
            rows.append((found.name, "-", "no version", policy.describe(), str(found.folder)))
        for number in sorted(found.versions, reverse=True):
            fv = found.versions[number]
            try:
                load_model_folder(fv.folder)
                check = "ok"
            except ManifestError as e:
                check, broken = "BROKEN", broken + 1
                problems.append(f"{found.name} version {number}: {e}")
            served = "served" if number in chosen else "not served"
            rows.append(
                (found.name, str(number), check, f"{policy.describe()}: {served}", str(fv.folder))
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for problem in problems:
        print(f"\n{problem}")
    return 1 if broken else 0


def _cmd_publish(args: argparse.Namespace) -> int:
    try:
        target = publish(args.source, args.repository, args.name)
    except (ManifestError, OSError) as e:
        print(f"{PROG}: not published: {e}", file=sys.stderr)
        return 1
    print(f"published {target.parent.name} version {target.name}: {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    repo = argparse.ArgumentParser(add_help=False)
    repo.add_argument(
        "--repository",
        type=Path,
        default=_default_repository(),
        help="the model repository (default: LATENTSERVE_MODELS_DIR, else the shipped models)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", parents=[repo], help="models, versions and whether they check out")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser(
        "publish", parents=[repo], help="copy a model folder in as the next version, atomically"
    )
    p.add_argument("source", type=Path, help="a model folder (model.json + graphs)")
    p.add_argument("--name", help="the model's name in the repository (default: model.json's)")
    p.set_defaults(func=_cmd_publish)
    add_import_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ImportRefused, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
