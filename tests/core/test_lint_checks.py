"""The two lint scripts: import cycles among first-party modules, and patches of
private names (or of Django's clock) in tests and demo code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"
PYPROJECT = """
[tool.importlinter]
root_packages = ["alpha", "beta"]
"""


def tree(root: Path, files: dict[str, str]) -> Path:
    (root / "pyproject.toml").write_text(PYPROJECT)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def run(script: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / script), "--root", str(root), *args],
                          cwd=root, capture_output=True, text=True, timeout=60)


CLEAN_PACKAGES = {
    "alpha/__init__.py": "",
    "alpha/models.py": "VALUE = 1\n",
    "alpha/services.py": "from alpha.models import VALUE\n",
    "beta/__init__.py": "",
    "beta/views.py": "from alpha import services\n",
}


def test_a_tree_without_cycles_passes(tmp_path):
    answer = run("check_import_cycles.py", tree(tmp_path, CLEAN_PACKAGES))

    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert answer.stdout == ""


def test_a_cycle_through_a_function_local_import_fails_with_file_and_line(tmp_path):
    root = tree(tmp_path, {**CLEAN_PACKAGES, "alpha/models.py": """\
        VALUE = 1


        def later():
            from alpha import services
            return services
        """})

    answer = run("check_import_cycles.py", root)

    assert answer.returncode == 1
    assert "alpha.models, alpha.services" in answer.stdout
    assert "alpha/models.py:5: alpha.models imports alpha.services" in answer.stdout
    assert "alpha/services.py:1: alpha.services imports alpha.models" in answer.stdout
    assert "beta" not in answer.stdout


def test_a_cycle_between_two_packages_is_found_too(tmp_path):
    root = tree(tmp_path, {**CLEAN_PACKAGES, "alpha/models.py": "import beta.views\n"})

    answer = run("check_import_cycles.py", root)

    assert answer.returncode == 1
    assert "alpha.models, alpha.services, beta.views" in answer.stdout


PATCHES = """\
    from unittest import mock

    from alpha import services
    from alpha.services import Engine
    from django.utils import timezone
    from thirdparty import client


    def test_private(monkeypatch, engine):
        monkeypatch.setattr(services, "_enqueue", lambda: None)
        monkeypatch.setattr("alpha.services._enqueue", lambda: None)
        monkeypatch.setattr(engine, "_claim", lambda: None)
        with mock.patch("alpha.services._helper.run"):
            pass
        with mock.patch.object(Engine, "_step"):
            pass
        with mock.patch("django.utils.timezone.now", return_value=None):
            pass
        monkeypatch.setattr(timezone, "now", lambda: None)
"""

ALLOWED = """\
    from unittest import mock

    from alpha import services
    from django.conf import settings
    from thirdparty import client


    def test_public(monkeypatch):
        monkeypatch.setattr(services, "enqueue", lambda: None)
        monkeypatch.setattr("alpha.services.VALUE", 2)
        monkeypatch.setattr(client, "_session", None)
        monkeypatch.setattr(settings, "DEBUG", True)
        setattr(services, "_plain_setattr_is_not_a_patch", 1)
        with mock.patch("thirdparty.client._private"):
            pass
"""


def test_patches_of_private_names_and_of_the_clock_fail_with_file_and_line(tmp_path):
    root = tree(tmp_path, {**CLEAN_PACKAGES, "tests/test_x.py": PATCHES})

    answer = run("check_private_patches.py", root, "tests")

    assert answer.returncode == 1
    flagged = [line.split(": ", 1)[0] for line in answer.stdout.splitlines()[:-1]]
    assert flagged == [f"tests/test_x.py:{n}" for n in (10, 11, 12, 13, 15, 17, 19)]
    assert "alpha.services._enqueue" in answer.stdout
    assert "core.clock.use" in answer.stdout


def test_public_names_settings_and_other_libraries_privates_pass(tmp_path):
    root = tree(tmp_path, {**CLEAN_PACKAGES, "tests/test_x.py": ALLOWED})

    answer = run("check_private_patches.py", root, "tests")

    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert answer.stdout == ""


def test_the_default_paths_are_the_tests_and_the_demo_code(tmp_path):
    root = tree(tmp_path, {**CLEAN_PACKAGES, "tests/test_x.py": ALLOWED,
                           "demo_fleet/run.py": PATCHES, "alpha/clean.py": PATCHES})

    answer = run("check_private_patches.py", root)

    assert answer.returncode == 1
    assert "demo_fleet/run.py:10:" in answer.stdout
    assert "alpha/clean.py" not in answer.stdout and "tests/test_x.py" not in answer.stdout
