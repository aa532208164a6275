"""Policies as code: the policy document (``document``), its pure evaluation over the
facts of one decision (``evaluate``), and its compiled form in the policy rows
(``compile``, ``export``). docs/policies.md."""
