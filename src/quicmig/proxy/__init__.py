"""`quicmig proxy`: a userspace UDP middlebox (NAT rebinding, link impairments, pcap)."""
