"""filterproxy: a DNS resolver and HTTP(S) filtering proxy that keeps children safe online."""

__version__ = "0.1.0"
