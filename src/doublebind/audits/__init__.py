"""Audits a defender can run: the behaviour-agnostic auditor of the embedded world."""
