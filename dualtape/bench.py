"""``python -m dualtape.bench``: dualtape against its peers, in one run.

A thin entry to ``benchmarks/compare.py`` of a source checkout (the problems and the
peers' set-up live beside the asv suite, which is not installed with the package);
``python -m dualtape.bench --help`` lists the options.
"""
import pathlib
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def main(argv=None):
    if not (BENCHMARKS / "compare.py").exists():
        raise SystemExit("python -m dualtape.bench runs benchmarks/compare.py from a source "
                         f"checkout of dualtape; {BENCHMARKS} has no compare.py")
    sys.path.insert(0, str(BENCHMARKS))
    import compare
    return compare.main(argv)


if __name__ == "__main__":
    sys.exit(main())
