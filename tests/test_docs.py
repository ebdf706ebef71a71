"""Every ```python block of the docs (index, API reference, solvers, sparse derivatives, the
tutorial in English and Korean) runs and shows what it claims.

Blocks with ``>>>`` prompts are doctest sessions (NORMALIZE_WHITESPACE | ELLIPSIS), compared
with NumPy's print options fixed; other blocks are executed. Each block starts from a fresh
namespace holding ``np`` and ``dualtape``. Blocks that define ``@numba.njit`` functions run
as modules written under ``__pycache__``, so that Numba's cache keeps their compilation.
"""
import doctest
import hashlib
import importlib.util
import pathlib
import sys
import re

import numpy as np
import pytest

import dualtape

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
FILES = ("index.md", "api.md", "solvers.md", "sparse.md", "tutorial.md", "ko/tutorial.md",
         "guide.md")
MODULES = pathlib.Path(__file__).resolve().parent / "__pycache__" / "docs_blocks"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
# NumPy's defaults, set explicitly so that no other test or user setting leaks in
PRINT_OPTIONS = dict(precision=8, threshold=1000, edgeitems=3, linewidth=75, suppress=False,
                     nanstr="nan", infstr="inf", sign="-", floatmode="maxprec",
                     legacy=False)


def blocks():
    """(file name, line number, source) of every ```python block."""
    found = []
    for name in FILES:
        text = (DOCS / name).read_text()
        for m in FENCE.finditer(text):
            found.append((name, text.count("\n", 0, m.start(1)) + 1, m.group(1)))
    return found


BLOCKS = blocks()


def namespace():
    return {"np": np, "dualtape": dualtape, "__name__": "docs"}


@pytest.mark.parametrize("name,line,source", BLOCKS,
                         ids=[f"{name}:{line}" for name, line, _ in BLOCKS])
def test_block_runs(name, line, source):
    with np.printoptions(**PRINT_OPTIONS):
        if ">>>" in source:
            test = doctest.DocTestParser().get_doctest(source, namespace(), f"{name}:{line}",
                                                       str(DOCS / name), line - 1)
            report = []
            runner = doctest.DocTestRunner(optionflags=FLAGS)
            runner.run(test, out=report.append)
            failed = runner.summarize(verbose=False).failed
            assert not failed, f"{name}, block at line {line}:\n" + "".join(report)
        elif "numba.njit" in source:
            run_as_module(source)
        else:
            exec(compile(source, f"{DOCS / name}:{line}", "exec"), namespace())


def run_as_module(source):
    """Import the block from a file named by its content (unchanged blocks keep their
    file, so Numba's on-disk cache applies)."""
    MODULES.mkdir(parents=True, exist_ok=True)
    path = MODULES / f"block_{hashlib.sha1(source.encode()).hexdigest()[:16]}.py"
    if not path.exists():
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = sys.modules[path.stem] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def test_every_file_has_examples():
    for name in FILES:
        assert sum(1 for n, _, _ in BLOCKS if n == name) >= 5, name
