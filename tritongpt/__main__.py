"""tritongpt COMMAND [ARGS]: the project's commands under one name.

    tritongpt train [CONFIG] [--key=value ...]   python -m tritongpt.train (torchrun: -m tritongpt.train)
    tritongpt sample --out_dir=...               python -m tritongpt.train.sample
    tritongpt prep NAME [--key=value ...]        python -m tritongpt.prep
    tritongpt bench [...]                        python -m tritongpt.bench
    tritongpt plan / memory / convert [...]      python -m tritongpt.train.plan / .memory / .convert
    tritongpt profile [...]                      python -m tritongpt.profiles.capture

`tritongpt COMMAND --help` prints that command's own help.
"""

import runpy
import sys

COMMANDS = {
    "train": "tritongpt.train",
    "sample": "tritongpt.train.sample",
    "prep": "tritongpt.prep",
    "bench": "tritongpt.bench",
    "plan": "tritongpt.train.plan",
    "memory": "tritongpt.train.memory",
    "convert": "tritongpt.train.convert",
    "profile": "tritongpt.profiles.capture",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    sys.argv = [f"tritongpt {command}", *rest]
    runpy.run_module(COMMANDS[command], run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
