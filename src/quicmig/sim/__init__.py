"""The virtual-time simulator: real aioquic connections on modelled links and NATs."""
