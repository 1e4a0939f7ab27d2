"""The namespace lab: a scenario's topology in Linux network namespaces (quicmig.lab.build),
every link a TUN pair shaped by the simulator's own link model in a userspace element
(quicmig.lab.element), NATs in nftables with conntrack, moved by the kernel (quicmig.lab.moves):
NAT rebinding, interface switches, address changes, links down and up, link changes."""
