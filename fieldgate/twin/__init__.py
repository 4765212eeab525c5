"""Fleet twin: simulated sites and devices on a virtual clock."""
