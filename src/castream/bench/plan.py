"""Run planning at scale: the time per image of choosing its adversarial hosts (:meth:`Plan.hosts`) in
a selection of N images of 1,000 balanced classes, the hosts being images of another class, for a sample
of the images (the work per image does not depend on which).

    python -m castream.bench.plan --images 200000   # issue 29's target: <= 0.1 ms per image
"""

from __future__ import annotations

import time

from ..evaluate.plan import Plan
from ._timing import base_parser, emit


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--sample", type=int, default=2_000, help="images whose hosts are timed")
    parser.add_argument("--cases", type=int, default=3, help="hosts per image (the adversarial default)")
    args = parser.parse_args(argv)
    if not 0 < args.sample <= args.images:
        parser.error(f"--sample must be in [1, --images]; got {args.sample}")
    plan = Plan(list(range(args.images)), {"m": ["gap"]}, [], 64, {}, seed=0)
    step = args.images // args.sample
    start = time.perf_counter()
    for index in range(0, step * args.sample, step):
        plan.hosts(index, args.cases, lambda c, t=index % 1000: c % 1000 != t)
    seconds = time.perf_counter() - start
    emit(
        {
            "benchmark": "plan",
            "images": args.images,
            "cases": args.cases,
            "ms_per_image": 1000 * seconds / args.sample,
            "target": "<= 0.1 ms per image at 200,000 images",
        }
    )


if __name__ == "__main__":
    main()
