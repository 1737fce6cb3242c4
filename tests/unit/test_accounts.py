"""Account kinds and trust (docs/contract/mqtt.md §8, §9): the account decides, never the
payload."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadwatch.domain.accounts import (
    Account,
    AccountKind,
    Trust,
    acl_section,
    effective_station_type,
)

DECLARED = st.integers(min_value=0, max_value=255)


@given(DECLARED)
def test_an_ordinary_account_never_rises_to_a_trusted_type(declared: int) -> None:
    used = effective_station_type(declared, Trust.ORDINARY, believe_declared=True)
    assert used not in (10, 15)
    if declared not in (10, 15):
        assert used == declared  # a bus stays a bus


@given(DECLARED)
def test_emergency_and_operator_accounts_are_trusted_whatever_they_declare(declared: int) -> None:
    assert effective_station_type(declared, Trust.EMERGENCY, believe_declared=False) == 10
    assert effective_station_type(declared, Trust.OPERATOR, believe_declared=False) == 15


@given(DECLARED)
def test_the_fleets_declared_type_is_believed_only_when_allowed(declared: int) -> None:
    assert effective_station_type(declared, None, believe_declared=True) == declared
    unbelieved = effective_station_type(declared, None, believe_declared=False)
    assert unbelieved not in (10, 15)


def test_each_kind_publishes_only_its_own_tree() -> None:
    assert Account.of("car1", AccountKind.VEHICLE).may_publish("its") == (
        "vehicles/car1/cam",
        "vehicles/car1/denm",
    )
    assert Account.of("amb1", AccountKind.EMERGENCY).may_publish("its") == (
        "vehicles/amb1/cam",
        "vehicles/amb1/denm",
    )
    assert Account.of("ann", AccountKind.PHONE).may_publish("its") == ("owntracks/ann/#",)
    assert Account.of("u-1", AccountKind.ITS).may_publish("pfx") == (
        "pfx/inQueue/v2x/cam/u-1/#",
        "pfx/inQueue/v2x/denm/u-1/#",
    )
    assert Account.of("bob", AccountKind.FOLLOWER).may_publish("its") == ()
    assert acl_section(Account.of("bob", AccountKind.FOLLOWER), "its") == ""
    assert acl_section(Account.of("ann", AccountKind.PHONE), "its") == (
        "user ann\ntopic write owntracks/ann/#\n"
    )


def test_trust_follows_the_kind_and_only_its_accounts_may_choose() -> None:
    assert Account.of("amb1", AccountKind.EMERGENCY).trust is Trust.EMERGENCY
    assert Account.of("rsu1", AccountKind.OPERATOR).trust is Trust.OPERATOR
    assert Account.of("car1", AccountKind.VEHICLE).trust is Trust.ORDINARY
    assert Account.of("u", AccountKind.ITS, Trust.OPERATOR).trust is Trust.OPERATOR
    with pytest.raises(ValueError, match="only `its` may choose"):
        Account.of("car1", AccountKind.VEHICLE, Trust.EMERGENCY)


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "#", "x" * 65, "a.b", "é"])
def test_names_outside_the_station_id_rule_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="1 to 64 characters"):
        Account.of(name, AccountKind.VEHICLE)
