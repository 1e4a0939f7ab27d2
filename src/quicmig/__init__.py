"""quicmig: a lab for QUIC connection migration (RFC 9000 section 9)."""

__version__ = "0.1.0"
