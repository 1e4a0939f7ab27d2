"""Foreign QUIC stacks as data (stacks/*.toml), their endpoint processes, and transfers
between them through quicmig's proxy, checked from the capture."""
