"""Trust comes from the account (docs/contract/mqtt.md §9): real accounts on a real Mosquitto, a
real gateway.

Each account publishes through the broker as itself; the gateway must raise and clear accidents
according to how the account was provisioned, whatever stationType the payload declares.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import orjson
import pytest

from roadwatch.adapters.mqtt import MqttClient, MqttEndpoint
from roadwatch.domain.accounts import AccountKind
from roadwatch.domain.events import Event, EventStatus, EventType
from roadwatch.runner.accounts import AccountManager
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.services.gateway import Gateway
from roadwatch.services.gateway.intake import Intake
from roadwatch.settings import Settings
from tests.integration.test_gateway_intake import eventually

pytestmark = pytest.mark.integration

ACCIDENT = 2
LAT, LON = 49.2583, 4.0317


def denm(
    station: str, station_type: int, *, termination: str | None = None, lat: float = LAT
) -> bytes:
    payload: dict[str, object] = {
        "stationId": station,
        "stationType": station_type,
        "timestamp": round(time.time() * 1000),
        "lat": lat,
        "lon": LON,
        "causeCode": ACCIDENT,
    }
    if termination is not None:
        payload["termination"] = termination
    return orjson.dumps(payload)


class Fleet:
    """Accounts of every kind, each publishing as itself, and the gateway that reads them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.accounts = AccountManager(settings)
        self.gateway = Gateway(settings, None)
        self.intake = Intake(settings, self.gateway)

    def account(self, kind: AccountKind, prefix: str) -> MqttEndpoint:
        made = self.accounts.add(kind, f"{prefix}-{secrets.token_hex(3)}")
        s = self.settings
        return MqttEndpoint(s.mqtt_host, s.mqtt_port, made.account.name, made.password)

    async def publish(self, endpoint: MqttEndpoint, payload: bytes) -> None:
        station = orjson.loads(payload)["stationId"]
        client = MqttClient(endpoint, name=endpoint.username)
        running = asyncio.ensure_future(client.run())
        try:
            await client.wait_connected(10)
            received = self.gateway.detection.received
            ack = client.publish(f"vehicles/{station}/denm", payload, qos=1)
            assert ack is not None
            await asyncio.wait_for(ack, 10)
            assert await eventually(lambda: self.gateway.detection.received > received, 10)
        finally:
            await client.close()
            running.cancel()

    def accidents(self) -> list[Event]:
        return [e for e in self.gateway.outbox.pending() if e.type is EventType.ACCIDENT]


@pytest.fixture
def settings(test_settings: Settings, mosquitto: Mosquitto) -> Settings:
    return test_settings.model_copy(
        update={"mqtt_gateway_client_id": f"trust-test-{secrets.token_hex(4)}"}
    )


def test_declared_trust_is_never_believed_and_provisioned_trust_always_is(
    settings: Settings,
) -> None:
    async def scenario() -> None:
        fleet = Fleet(settings)
        running = asyncio.ensure_future(fleet.intake.run())
        try:
            await fleet.intake.wait_connected(10)
            forger = fleet.account(AccountKind.VEHICLE, "forger")
            ambulance = fleet.account(AccountKind.EMERGENCY, "amb")
            operator = fleet.account(AccountKind.OPERATOR, "rsu")

            # An ordinary vehicle declaring itself an emergency vehicle does not raise alone.
            await fleet.publish(forger, denm(forger.username, 10))
            assert fleet.accidents() == []
            assert fleet.gateway.detection.trust_refused == 1

            # An emergency account is trusted even when its payload says passenger car.
            await fleet.publish(ambulance, denm(ambulance.username, 5))
            [raised] = fleet.accidents()
            assert raised.status is EventStatus.ACTIVE

            # An ordinary vehicle declaring itself a road operator cannot clear it...
            # (it withdraws its own report only: a new version, still active).
            await fleet.publish(forger, denm(forger.username, 15, termination="negation"))
            assert {e.status for e in fleet.accidents()} == {EventStatus.ACTIVE}
            assert fleet.gateway.detection.trust_refused == 2

            # ...the operator account can, whatever its payload declares.
            await fleet.publish(operator, denm(operator.username, 5, termination="negation"))
            assert fleet.accidents()[-1].status is EventStatus.CLEARED
            assert fleet.accidents()[-1].id == raised.id
        finally:
            await fleet.intake.close()
            running.cancel()

    asyncio.run(scenario())


@pytest.mark.parametrize("believed", [True, False])
def test_the_fleets_declared_type_is_believed_only_for_stations_no_account_owns(
    settings: Settings, believed: bool
) -> None:
    settings = settings.model_copy(update={"fleet_declared_trust": believed})

    async def scenario() -> None:
        fleet = Fleet(settings)
        owned = fleet.account(AccountKind.VEHICLE, "owned")
        running = asyncio.ensure_future(fleet.intake.run())
        try:
            await fleet.intake.wait_connected(10)
            simulator = MqttEndpoint.fleet(settings)
            # A station an ordinary account owns: the fleet cannot lend it trust.
            await fleet.publish(simulator, denm(owned.username, 10))
            assert fleet.accidents() == []
            # A station nobody owns: only the fleet can publish there (docs/contract/mqtt.md §9).
            # (far from the first: two reporters together would raise it anyway)
            await fleet.publish(simulator, denm(f"sim-{secrets.token_hex(3)}", 10, lat=LAT + 0.1))
            assert len(fleet.accidents()) == (1 if believed else 0)
        finally:
            await fleet.intake.close()
            running.cancel()

    asyncio.run(scenario())
