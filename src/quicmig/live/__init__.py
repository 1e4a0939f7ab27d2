"""The live lab: the same sans-IO endpoints and tracker as the simulator, over real UDP sockets.

`certs` makes and loads the certificate files, `server` runs `ServerEndpoint` on asyncio UDP
sockets (the message protocol, and HTTP/3 from `h3app`; its log lines come from `narration`),
`client` runs `ClientEndpoint` and migrates for real: new sockets, new source ports, other
loopback addresses.
"""
