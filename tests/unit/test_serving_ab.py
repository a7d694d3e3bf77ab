"""benchmarks/serving_ab.py loads modules as they were at a commit, beside the current
ones, each old module seeing the other old ones."""

from __future__ import annotations

import subprocess

import pytest

from benchmarks.serving_ab import old_modules
from serving import again, service


def test_old_modules_are_separate_and_see_each_other() -> None:
    try:
        subprocess.run(["git", "rev-parse", "HEAD"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    olds = old_modules(["serving.again", "serving.service"], "HEAD")
    old_service, old_again = olds["serving.service"], olds["serving.again"]
    assert old_service is not service and old_service.RecommendationService is not \
        service.RecommendationService
    # the old service calls the old own-items source, not the working tree's
    assert old_service.own_items is old_again.own_items is not again.own_items
