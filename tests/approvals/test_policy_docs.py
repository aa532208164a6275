"""docs/policies.md: its worked examples are whole documents that `policy test` passes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.management import call_command

from approvals.policy import document as policy_document
from approvals.policy.evaluate import example_failures

DOC = Path(__file__).resolve().parents[2] / "docs" / "policies.md"
MARKED = re.compile(r"<!-- policy-example -->\s*```yaml\n(.*?)```", re.S)


def worked_examples() -> list[str]:
    return MARKED.findall(DOC.read_text())


def test_the_docs_have_three_worked_examples():
    assert len(worked_examples()) == 3


@pytest.mark.parametrize("index", range(3))
def test_each_worked_example_parses_and_its_examples_pass(index):
    document = policy_document.parse(worked_examples()[index])
    assert document.examples, "a worked example ships examples"
    assert example_failures(document) == []


def test_policy_test_passes_a_worked_example_from_a_file(tmp_path, capsys):
    path = tmp_path / "friday.yaml"
    path.write_text(worked_examples()[2])
    call_command("policy", "test", str(path))
    assert "3 of 3 examples pass" in capsys.readouterr().out


def test_the_reference_document_in_the_docs_is_valid():
    reference = re.search(r"## The document\n\n```yaml\n(.*?)```", DOC.read_text(), re.S)
    document = policy_document.parse(reference.group(1))
    assert example_failures(document) == []
