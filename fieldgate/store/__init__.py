"""Stores through SQLModel: catalog, fleet, plans, approvals, audit."""
