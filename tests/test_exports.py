"""The public names stay importable from the package (as klein guards them)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

import yadiskpush


class ExportTests(SynchronousTestCase):
    def test_allNamesImportable(self) -> None:
        """Every name in __all__ is an attribute of the package."""
        for name in yadiskpush.__all__:
            self.assertTrue(hasattr(yadiskpush, name), name)

    def test_publicSurface(self) -> None:
        """The documented entry points are exported."""
        self.assertLessEqual(
            {
                "PushService",
                "PushFleet",
                "Settings",
                "Secret",
                "Notification",
                "PushHandler",
            },
            set(yadiskpush.__all__),
        )
