"""Capture analysis: quic-interop-runner's migration checks on a pcap decrypted by tshark."""
