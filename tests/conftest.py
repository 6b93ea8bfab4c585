from __future__ import annotations

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# the signing key of the tests, and no bounds from the environment of whoever runs them
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="nbbuild-tests-config-")
for _name in ("NBBUILD_QUOTA", "NBBUILD_MIN_FREE", "NBBUILD_EVICTION", "NBBUILD_DIR", "NBBUILD_PROGRESS", "NBBUILD_VIEW",
              "MPLBACKEND"):
    os.environ.pop(_name, None)

import nbbuild  # noqa: E402


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def b(store_dir):
    with nbbuild.Build(store_dir, workers=2) as build:
        yield build


@pytest.fixture
def calls():
    """Run counts, asserted as lists: rules append their name when their body runs."""
    return []
