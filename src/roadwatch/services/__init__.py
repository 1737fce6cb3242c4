"""One module per RoadWatch process; each exposes `main(settings)`."""
