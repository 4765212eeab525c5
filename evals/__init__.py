"""Scenario suites, scorers, runner and reports."""
