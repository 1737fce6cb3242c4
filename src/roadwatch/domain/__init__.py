"""The pure core: wire values, events and detection rules. Nothing here does I/O."""
