"""RoadWatch: road events from connected vehicles."""

__version__ = "0.1.0"
