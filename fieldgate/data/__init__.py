"""Sample catalog and fleet shipped with fieldgate."""
