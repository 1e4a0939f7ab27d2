"""Decrypted capture datagrams made by hand, as tshark would report them, for the judge."""

from __future__ import annotations

from quicmig.capture.tshark import QuicDatagram
from quicmig.core.datagram import Address
from quicmig.interop.wire import PATH_CHALLENGE, PATH_RESPONSE


def quic_datagram(
    number: int,
    src: Address,
    dst: Address,
    frames: tuple[int, ...] = (),
    *,
    at: float | None = None,
    data: str = "c1",
) -> QuicDatagram:
    """One short-header datagram of connection 0, frame `number` at `at` (default number ms).
    No frames: one tshark could not decrypt. A PATH_CHALLENGE or PATH_RESPONSE carries `data`."""
    return QuicDatagram(
        number=number,
        at=number / 1000 if at is None else at,
        src=src,
        dst=dst,
        connection=0,
        header_forms=(0,),
        long_types=(),
        dcids=("aa",),
        short_pn=number if frames else None,
        frames=frames,
        challenges=(data,) if PATH_CHALLENGE in frames else (),
        responses=(data,) if PATH_RESPONSE in frames else (),
    )
