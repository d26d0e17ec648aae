"""The ``fastgan`` command: ``fastgan lab`` (the mode-collapse lab) and ``fastgan bench``
(kernel microbenchmarks). Each subcommand's options live with its module; the argument
checks both share (argparse ``type=`` functions and the output-folder check) live here, so
that a bad argument stops the command before any work with one ``prog: error: ...`` line."""
from __future__ import annotations

import argparse
import math
import os
import importlib.util
import sys
import tempfile
from pathlib import Path

USAGE = """usage: fastgan {lab,bench} [options]

  lab     train GANs on generated 2-D mixtures and show mode collapse and its remedies
  bench   time the fused discriminator step against PyTorch baselines

Run `fastgan <command> --help` for a command's options."""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def seed(text: str) -> int:
    """argparse ``type=``: a random seed torch accepts as given, 0 <= seed < 2**64."""
    value = _int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**64 - 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse ``type=``: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def names(text: str) -> list[str]:
    """argparse ``type=``: a comma-separated list of at least one name."""
    out = [t.strip() for t in text.split(",") if t.strip()]
    if not out:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return out


def positive_ints(text: str) -> list[int]:
    """argparse ``type=``: a comma-separated list of at least one integer >= 1."""
    try:
        out = [int(item) for item in names(text)]
    except (ValueError, argparse.ArgumentTypeError):
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return out


def output_problem(folder: Path, files: list[str] = ()) -> str:
    """'' when ``folder`` is (after creating it, with its parents, if needed) a folder this
    process can write ``files`` in, else why not."""
    try:
        if folder.exists() and not folder.is_dir():
            return f"{folder} is a file, not a folder"
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        for name in files:
            path = folder / name
            if path.is_dir():
                return f"{path} is a folder; the output file cannot be written there"
            if path.exists() and not os.access(path, os.W_OK):
                return f"{path} exists and is not writable"
    except (OSError, ValueError) as e:  # ValueError: e.g. an embedded NUL byte
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return f"cannot write in {folder}: {why}"
    return ""


EXTRA_NEEDS = {"lab": ("matplotlib",), "bench": ("tqdm",)}
"""What each command imports beyond the library's own dependencies (the ``lab`` extra)."""


def missing_modules(names) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in EXTRA_NEEDS and (missing := missing_modules(EXTRA_NEEDS[command])):
        print(f"fastgan {command}: error: it needs {', '.join(missing)}, which the library alone does not "
              "install; run: pip install 'fastgan[lab]'", file=sys.stderr)
        return 2
    if command == "lab":
        from fastgan.lab.cli import main as run
    elif command == "bench":
        from fastgan.bench.cli import main as run
    else:
        print(f"{USAGE}\nfastgan: error: unknown command {command!r} (choose from lab, bench)", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
