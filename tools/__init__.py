"""The tools agents call: fleet queries, deploy, pause, rollback, telemetry."""
