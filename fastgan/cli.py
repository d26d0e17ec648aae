"""The ``fastgan`` command: ``fastgan lab`` (the mode-collapse lab) and ``fastgan bench``
(kernel microbenchmarks). Each subcommand's options live with its module."""
from __future__ import annotations

import sys

USAGE = """usage: fastgan {lab,bench} [options]

  lab     train GANs on generated 2-D mixtures and show mode collapse and its remedies
  bench   time the fused discriminator step against PyTorch baselines

Run `fastgan <command> --help` for a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "lab":
        from fastgan.lab.cli import main as run
    elif command == "bench":
        from fastgan.bench.cli import main as run
    else:
        print(f"fastgan: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
