"""What a run can conclude: verdicts, check states and the kinds of migration a server sees."""

from __future__ import annotations

from enum import Enum


class Verdict(Enum):
    PASSED = "passed"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"


class CheckState(Enum):
    PASSED = "passed"
    FAILED = "failed"
    UNSUPPORTED = "unsupported"  # the behaviour could not be produced or observed here
    NOT_APPLICABLE = "not_applicable"  # nothing to check (neither a pass nor a failure)


class MigrationKind(Enum):
    """What the server saw (RFC 9000 section 9.3): the client's non-probing packets arrive
    from a new port of the same address, or from a new address."""

    PORT_CHANGE = "port_change"
    ADDRESS_CHANGE = "address_change"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


class Rules(Enum):
    """Two readings of the migration rules, each giving a verdict.

    `strict` is quic-interop-runner's: the server's first packet on a new path must carry
    PATH_CHALLENGE. `rfc9000` is what RFC 9000 sections 8.2, 9.3 and 9.4 require: the new
    address validated before it is used beyond the anti-amplification limit, and every
    challenge answered; answering the peer's own PATH_CHALLENGE first is legal.
    """

    STRICT = "strict"
    RFC9000 = "rfc9000"
