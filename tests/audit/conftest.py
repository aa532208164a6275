"""Signed checkpoints, witnesses and evidence bundles: shared fixtures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from django.conf import settings

from audit.checkpoints import checkpoint_sign
from tests.audit.audit_helpers import record

VERIFIER_PATH = Path(settings.BASE_DIR) / "tools" / "verify_bundle.py"


@pytest.fixture(scope="session")
def verifier():
    """tools/verify_bundle.py loaded as a module of its own (it imports nothing of ours)."""
    spec = importlib.util.spec_from_file_location("verify_bundle", VERIFIER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(path, *pins) -> tuple[int, str]:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = module.main([str(path), *[a for pin in pins for a in ("--pin-key", pin)]])
        return code, out.getvalue().strip()

    return run


def witness_lines() -> list[dict]:
    path = Path(settings.PORTAL_AUDIT_WITNESS_FILES[0])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def signed_history(db):
    """Six events, a checkpoint after the third and one after the sixth."""
    events = [record(f"step.{i}", object_id=str(i)) for i in range(3)]
    first = checkpoint_sign(reason="schedule")
    events += [record(f"step.{i}", object_id=str(i)) for i in range(3, 6)]
    second = checkpoint_sign(reason="schedule")
    return events, first.checkpoint, second.checkpoint
