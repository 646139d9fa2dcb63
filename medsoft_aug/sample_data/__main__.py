"""``python -m medsoft_aug.sample_data OUT [--n-studies N] [--seed S] [--rsna-studies K]``."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import MedsoftError
from .build import make_sample_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsoft_aug.sample_data",
                                     description="Generate the deterministic phantom sample data set.")
    parser.add_argument("out", help="output folder (replaced as a whole; must be empty or an earlier "
                                     "sample data folder)")
    parser.add_argument("--n-studies", type=int, default=32, help="number of 3D studies (default 32, at least 3)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--rsna-studies", type=int, default=3,
                        help="studies in the RSNA-2024-shaped folder (default 3)")
    args = parser.parse_args(argv)
    try:
        summary = make_sample_data(args.out, n_studies=args.n_studies, seed=args.seed,
                                   rsna_studies=args.rsna_studies)
    except MedsoftError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
