"""`make test` runs two pytest processes: each must get its own directories, so that one
process ending (and stopping the demo services under its deploy root) never stops the
services the other is deploying to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWN_PATHS = ("PORTAL_DEPLOY_ROOT", "PORTAL_ARTIFACT_STORE")
SHOWN = ("PORTAL_VAR_DIR", "PORTAL_PG_PORT", "PORTAL_REDIS_PORT", *OWN_PATHS,
         "PORTAL_ARTIFACT_SOURCES")


def plugin_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment after the test plugin loaded in a process started with ``env``."""
    code = ("import json, os, testkit.plugin; "
            f"print(json.dumps({{k: os.environ.get(k) for k in {SHOWN!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def base_env(tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "PYTEST_"))}
    return dict(keep, PORTAL_VAR_DIR=str(tmp_path / "var" / "test"))


@pytest.mark.parametrize("worker", ["gw1", "gw2"])
def test_each_test_process_has_its_own_deploy_root_and_artifact_store(tmp_path, worker):
    # The controller loads the plugin first; xdist starts its workers with its environment.
    controller = plugin_environment(base_env(tmp_path))
    first = plugin_environment(dict(base_env(tmp_path), **controller,
                                    PYTEST_XDIST_WORKER="gw0"))
    other = plugin_environment(dict(base_env(tmp_path), **controller,
                                    PYTEST_XDIST_WORKER=worker))

    assert other["PORTAL_VAR_DIR"] == f"{first['PORTAL_VAR_DIR']}-{worker}"
    assert other["PORTAL_PG_PORT"] != first["PORTAL_PG_PORT"]
    for name in OWN_PATHS:
        assert first[name] != other[name], name
        for env in (first, other):
            assert Path(env[name]).parent == Path(env["PORTAL_VAR_DIR"]), (name, env)
    # Artifacts are accepted from the process's own store.
    assert Path(other["PORTAL_ARTIFACT_STORE"]).as_uri() in other["PORTAL_ARTIFACT_SOURCES"]


def test_a_deploy_root_set_by_hand_is_kept(tmp_path):
    mine = str(tmp_path / "elsewhere")
    env = dict(base_env(tmp_path), PORTAL_DEPLOY_ROOT=mine)
    controller = plugin_environment(env)
    other = plugin_environment(dict(env, **controller, PYTEST_XDIST_WORKER="gw1"))
    assert controller["PORTAL_DEPLOY_ROOT"] == other["PORTAL_DEPLOY_ROOT"] == mine
