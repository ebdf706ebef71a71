"""The generated files match their sources of truth (the table, the dispatch layer)."""
import pathlib

from dualtape import gen

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_generated_files_are_current():
    stale = gen.main(check=True, root=ROOT)
    assert not stale, f"run `python -m dualtape.gen`: stale {stale}"


def test_opcodes_in_kernels_match_table():
    from dualtape import kernels, ops
    for name, code in ops.OPCODES.items():
        assert getattr(kernels, name.upper()) == code
    assert kernels.N_ELEMENTWISE == len(ops.TABLE)
