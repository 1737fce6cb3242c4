"""Pure, seeded vehicle simulation: no I/O, driven by the simulated clock."""
