"""`bws spec`: render the protocol spec, diff it between revisions, and
generate or check its test vectors."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import CommandError


def register(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="spec_command", metavar="SUBCOMMAND")

    render = commands.add_parser("render", help="write the whole spec as one Markdown document",
                                 description="Write the whole spec as one Markdown document, in reading order: "
                                             "constants, presets, types, containers, then functions.")
    render.add_argument("--out", type=Path, help="file to write (default: standard output)")
    render.set_defaults(run=run_render)

    diff = commands.add_parser("diff", help="list rule changes between two git revisions",
                               description="List the constants, types and functions of spec/ added, removed or "
                                           "changed between two git revisions, with a unified diff of each change.")
    diff.add_argument("rev_a", metavar="REV_A", help="older revision (any git revision name)")
    diff.add_argument("rev_b", metavar="REV_B", nargs="?", help="newer revision (default: the working tree)")
    diff.add_argument("--repo", type=Path, default=Path.cwd(), help="git repository (default: current directory)")
    diff.add_argument("--out", type=Path, help="file to write (default: standard output)")
    diff.set_defaults(run=run_diff)

    vectors = commands.add_parser("vectors", help="generate or check the spec's test vectors",
                                  description="Generate the spec's test vectors (spec/vectors/README.md) into a "
                                              "directory, or check that the spec reproduces those in it.")
    vectors.add_argument("--out", type=Path, help="directory to write the vectors to")
    vectors.add_argument("--check", type=Path, metavar="DIR", help="directory of vectors to check")
    vectors.set_defaults(run=run_vectors)


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)


def run_render(args) -> int:
    from bws.node.review import ReviewError, render_spec
    try:
        _emit(render_spec(), args.out)
    except (ReviewError, OSError) as error:
        raise CommandError(str(error)) from None
    return 0


def run_diff(args) -> int:
    from bws.node.review import ReviewError, diff_spec
    try:
        _emit(diff_spec(args.repo, args.rev_a, args.rev_b), args.out)
    except (ReviewError, OSError) as error:
        raise CommandError(str(error)) from None
    return 0


def run_vectors(args) -> int:
    from tqdm import tqdm

    from bws.node.review import ReviewError, check_vector, generate_vectors, read_vectors, write_vectors
    if (args.out is None) == (args.check is None):
        raise CommandError("give exactly one of --out DIR (generate) or --check DIR")
    try:
        if args.out is not None:
            for path in write_vectors(generate_vectors(), args.out):
                print(f"wrote {path}", file=sys.stderr)
            return 0
        failures = []
        vectors = read_vectors(args.check)
        for vector in tqdm(vectors, desc="checking vectors", unit="vector", file=sys.stderr):
            problem = check_vector(vector)
            if problem:
                failures.append(f"{vector['name']}: {problem}")
    except (ReviewError, OSError, KeyError, ValueError) as error:
        raise CommandError(f"{type(error).__name__}: {error}") from None
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"{len(vectors) - len(failures)}/{len(vectors)} vectors reproduced")
    return 1 if failures else 0
