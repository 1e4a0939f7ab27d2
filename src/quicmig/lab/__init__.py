"""The namespace lab (`quicmig lab`): the live server and client in Linux network namespaces,
moved by the kernel — NAT rebinding by conntrack, interface switch by link and route, IP change
by address replacement — with the migrations observed by the server's tracker."""
