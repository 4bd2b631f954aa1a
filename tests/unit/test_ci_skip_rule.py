"""The CI rule of tests/conftest.py: under CI=true a skip fails unless the test is opt-in."""

from __future__ import annotations

import pytest

from tests.conftest import CI_SKIP

INNER = """
import pytest

@pytest.fixture
def needs_a_thing():
    pytest.skip("the thing is missing")

def test_skips_in_its_body():
    pytest.skip("no engine here")

@pytest.mark.skipif(True, reason="a skipif mark")
def test_skipif():
    pass

def test_skips_in_a_fixture(needs_a_thing):
    pass

@pytest.mark.optin
def test_opt_in():
    pytest.skip("no GPU here")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

def test_passes():
    pass
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(
        "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n"
    )
    pytester.makeini("[pytest]\nmarkers =\n    optin: may skip under CI=true\n")
    pytester.makepyfile(test_inner=INNER)
    return pytester


def test_under_ci_a_skip_fails_unless_opt_in(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = inner.runpytest("-rA")
    # body skip -> failed; skipif and fixture skip happen in setup -> errors
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
    out = result.stdout.str()
    for reason in ("no engine here", "a skipif mark", "the thing is missing"):
        assert f"{CI_SKIP}: {reason} (" in out, reason
    assert "SKIPPED [1] test_inner.py:" in out and "no GPU here" in out


def test_without_ci_skips_stay_skips(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    inner.runpytest().assert_outcomes(passed=1, skipped=4, xfailed=1)
    monkeypatch.setenv("CI", "false")
    inner.runpytest().assert_outcomes(passed=1, skipped=4, xfailed=1)


def test_under_ci_a_module_that_skips_itself_fails(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(
        test_gone="import pytest\npytest.importorskip('no_such_module_hvt')\n"
        "def test_x():\n    pass\n"
    )
    monkeypatch.setenv("CI", "true")
    result = inner.runpytest("test_gone.py")
    result.assert_outcomes(errors=1)
    assert CI_SKIP in result.stdout.str()
    monkeypatch.delenv("CI")
    inner.runpytest("test_gone.py").assert_outcomes(skipped=1)
