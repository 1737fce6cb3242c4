"""Account kinds (docs/contract/mqtt.md §8, §9): what each may publish and how far it is trusted.

Trust comes from how an account was provisioned, never from a field its sender writes: the
gateway replaces the `stationType` a payload declares by the account's own trust level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

# Account names follow the stationId rule of docs/contract/mqtt.md §2, so a vehicle account is its
# station.
ACCOUNT_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# ETSI StationType values the detector trusts (docs/contract/detection.md §3).
EMERGENCY_STATION_TYPE: Final = 10
OPERATOR_STATION_TYPE: Final = 15
TRUSTED_STATION_TYPES: Final = frozenset({EMERGENCY_STATION_TYPE, OPERATOR_STATION_TYPE})
# What a declared trusted type becomes when the account may not claim it: ETSI "unknown".
UNTRUSTED_STATION_TYPE: Final = 0


class AccountKind(StrEnum):
    VEHICLE = "vehicle"
    EMERGENCY = "emergency"
    OPERATOR = "operator"
    PHONE = "phone"
    ITS = "its"
    # An XMPP account for a person who follows the alerts; it publishes nothing on MQTT.
    FOLLOWER = "follower"

    @property
    def is_mqtt(self) -> bool:
        return self is not AccountKind.FOLLOWER

    @property
    def publishes_as_vehicle(self) -> bool:
        return self in _VEHICLE_KINDS


_VEHICLE_KINDS: Final = frozenset(
    {AccountKind.VEHICLE, AccountKind.EMERGENCY, AccountKind.OPERATOR}
)


class Trust(StrEnum):
    ORDINARY = "ordinary"
    EMERGENCY = "emergency"
    OPERATOR = "operator"

    @property
    def station_type(self) -> int | None:
        """The stationType this trust stands for; None for ordinary (the payload's, lowered)."""
        return _TRUST_TYPES.get(self)


_TRUST_TYPES: Final = {
    Trust.EMERGENCY: EMERGENCY_STATION_TYPE,
    Trust.OPERATOR: OPERATOR_STATION_TYPE,
}
_KIND_TRUST: Final = {
    AccountKind.EMERGENCY: Trust.EMERGENCY,
    AccountKind.OPERATOR: Trust.OPERATOR,
}


@dataclass(frozen=True, slots=True)
class Account:
    """One provisioned account: its name, kind and trust (only `its` may choose its trust)."""

    name: str
    kind: AccountKind
    trust: Trust = Trust.ORDINARY

    @classmethod
    def of(cls, name: str, kind: AccountKind, trust: Trust | None = None) -> Account:
        """Validate and build an account; ValueError says what is wrong."""
        if ACCOUNT_NAME.fullmatch(name) is None:
            raise ValueError("an account name is 1 to 64 characters of A-Z a-z 0-9 _ -")
        implied = _KIND_TRUST.get(kind, Trust.ORDINARY)
        if trust is None or trust is implied:
            return cls(name, kind, implied)
        if kind is not AccountKind.ITS:
            raise ValueError(f"a {kind} account is trusted as {implied}; only `its` may choose")
        return cls(name, kind, trust)

    def may_publish(self, its_prefix: str) -> tuple[str, ...]:
        """The MQTT topic filters this account may publish to (docs/contract/mqtt.md §8)."""
        if self.kind.publishes_as_vehicle:
            return (f"vehicles/{self.name}/cam", f"vehicles/{self.name}/denm")
        if self.kind is AccountKind.PHONE:
            return (f"owntracks/{self.name}/#",)
        if self.kind is AccountKind.ITS:
            return (
                f"{its_prefix}/inQueue/v2x/cam/{self.name}/#",
                f"{its_prefix}/inQueue/v2x/denm/{self.name}/#",
            )
        return ()


def acl_section(account: Account, its_prefix: str) -> str:
    """The account's lines of a Mosquitto ACL file: its own topics, write only."""
    topics = account.may_publish(its_prefix)
    if not topics:
        return ""
    lines = [f"user {account.name}", *(f"topic write {topic}" for topic in topics)]
    return "\n".join(lines) + "\n"


def effective_station_type(declared: int, trust: Trust | None, *, believe_declared: bool) -> int:
    """The stationType the detector uses for one message.

    `trust` is that of the account owning the station, None when no account owns it; then
    only the fleet account can have published (the ACL lets nobody else write there), and its
    declared type is believed when `believe_declared` (the fleet rule of docs/contract/mqtt.md §9).
    """
    if trust is None:
        if believe_declared or declared not in TRUSTED_STATION_TYPES:
            return declared
        return UNTRUSTED_STATION_TYPE
    provisioned = trust.station_type
    if provisioned is not None:
        return provisioned
    return UNTRUSTED_STATION_TYPE if declared in TRUSTED_STATION_TYPES else declared
