"""Every bad input of `tools/bad_inputs.py` (recipes' command lines and the evaluation harness) gets one line
naming what is wrong, and exit status 2, before any training step or generated image."""


import pytest

import bad_inputs  # noqa: E402


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return bad_inputs.prepare(tmp_path_factory.mktemp("bad_inputs"))


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=lambda c: f"{c.target}:{' '.join(c.argv)[:40]}")
def test_bad_input_gets_one_clear_line(case, paths, tmp_path):
    code, message = bad_inputs.run_case(case, paths, tmp_path / "out")
    assert code == 2 and case.expect in message, message
    assert "error: " in message  # argparse prefixes its own with the program name
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained
