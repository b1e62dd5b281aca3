"""
Keep the tests' files out of the working tree.

trial's ``TestCase.mktemp`` makes its directories relative to the current
directory, which under pytest is the repository root: every run left a
``tests.<module>/`` tree per test module there. Here they go under one
temporary directory per run, removed at the end; Hypothesis keeps no example
database (a run must not depend on the runs before it) and writes its caches
(``constants/``) under that temporary directory too, not ``./.hypothesis``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from twisted.trial._synctest import SynchronousTestCase

#: Everything the tests write, removed at the end of the run. Made at import,
#: before Hypothesis writes its first cache.
_ROOT = tempfile.mkdtemp(prefix="yadiskpush-tests-")
set_hypothesis_home_dir(os.path.join(_ROOT, "hypothesis"))
settings.register_profile("yadiskpush", database=None)
settings.load_profile("yadiskpush")

_MAX_NAME = 32  # as trial: some file systems limit a name's length


@pytest.fixture(autouse=True, scope="session")
def _temporaryRoot() -> Iterator[None]:
    root = _ROOT

    def mktemp(self: SynchronousTestCase) -> str:
        base = os.path.join(
            root,
            type(self).__module__[:_MAX_NAME],
            type(self).__name__[:_MAX_NAME],
            self._testMethodName[:_MAX_NAME],
        )
        os.makedirs(base, exist_ok=True)
        return os.path.join(tempfile.mkdtemp("", "", base), "temp")

    original = SynchronousTestCase.mktemp
    SynchronousTestCase.mktemp = mktemp  # type: ignore[method-assign]
    try:
        yield
    finally:
        SynchronousTestCase.mktemp = original  # type: ignore[method-assign]
        set_hypothesis_home_dir(None)
        shutil.rmtree(root, ignore_errors=True)
