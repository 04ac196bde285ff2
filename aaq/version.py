"""The version of aaq: report.json records it, and ``aaq report`` refuses reports it cannot read."""

__version__ = "0.1.0"
