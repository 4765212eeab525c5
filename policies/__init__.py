"""The default Rego policy pack, shipped as package data."""
