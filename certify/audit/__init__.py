"""Soundness audits: generated instances with hidden counterexamples (``generate``), the audit runner for
our backends and external VNN-COMP tools (``run``), differential checks (``differential``) and the
mutation audit (``mutations``)."""
