"""Policy engines: the Rego policy pack evaluated in-process or on an OPA server."""
