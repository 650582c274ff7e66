"""The price table (app/cost/prices.yaml): it loads, it is validated, the local rate can be set
from the environment, and every Ray group's instance types are priced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cost.prices import (
    LOCAL_RATE_ENV,
    PRICES_FILE,
    InstancePrice,
    PriceError,
    load_prices,
    price_table,
)


@pytest.fixture(autouse=True)
def _no_local_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOCAL_RATE_ENV, raising=False)


def _raw() -> dict[str, Any]:
    return yaml.safe_load(PRICES_FILE.read_text())


def _write(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_packaged_table_loads() -> None:
    table = load_prices()
    assert table.region == "eu-west-1"
    assert table.currency == "USD"
    assert table.version[:4].isdigit()
    assert table.local_hourly_usd == 0.0
    assert set(table.ray_groups) == {"headgroup", "cpu", "driver", "gpu"}
    assert price_table() is price_table()
    assert price_table() == table


def test_every_ray_group_is_priced_on_its_market() -> None:
    table = load_prices()
    for group in table.ray_groups.values():
        assert group.instance_types
        for name in group.instance_types:
            assert table.instance(name).hourly(group.market) > 0
    gpu = [table.instance(name) for name in table.ray_groups["gpu"].instance_types]
    assert {p.accelerator for p in gpu} == {"T4", "A10G", "L4"}
    assert all(p.gpus == 1 for p in gpu)
    cpu = [table.instance(name) for name in table.ray_groups["cpu"].instance_types]
    assert all(p.gpus == 0 and p.accelerator is None for p in cpu)


def test_hourly_by_market() -> None:
    price = InstancePrice("x.large", 2, 0, 8.0, None, on_demand_hourly=0.1, spot_hourly=0.04)
    assert price.hourly("spot") == price.hourly("SPOT") == 0.04
    assert price.hourly("on-demand") == price.hourly("on_demand") == price.hourly("On-Demand")
    assert price.hourly("on_demand") == 0.1
    with pytest.raises(ValueError, match="spot, on-demand") as error:
        price.hourly("reserved")
    assert "reserved" in str(error.value)


def test_unknown_instance_and_service_name_the_table() -> None:
    table = load_prices()
    with pytest.raises(PriceError, match=r"p5\.48xlarge") as error:
        table.instance("p5.48xlarge")
    assert str(PRICES_FILE) in str(error.value)
    assert "g4dn.xlarge" in str(error.value)  # the known types are listed
    with pytest.raises(PriceError, match="no_such_service"):
        table.service("no_such_service")
    assert table.service("eks_cluster_hourly") > 0


def test_local_rate_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCAL_RATE_ENV, "0.35")
    assert load_prices().local_hourly_usd == 0.35
    monkeypatch.setenv(LOCAL_RATE_ENV, "0")
    assert load_prices().local_hourly_usd == 0.0
    monkeypatch.setenv(LOCAL_RATE_ENV, "")
    assert load_prices().local_hourly_usd == 0.0  # empty: the table's value
    for bad in ("-0.1", "cheap", "nan", "inf"):
        monkeypatch.setenv(LOCAL_RATE_ENV, bad)
        with pytest.raises(PriceError, match=LOCAL_RATE_ENV):
            load_prices()


def test_a_copy_of_the_table_loads_from_a_path(tmp_path: Path) -> None:
    raw = _raw()
    raw["local"]["hourly_usd"] = 0.2
    table = load_prices(_write(tmp_path, raw))
    assert table.local_hourly_usd == 0.2
    assert table.instances == load_prices().instances


def _broken(raw: dict[str, Any], case: str) -> str:
    """Breaks a copy of the table in one way; returns what the error must mention."""
    if case == "spot_above_on_demand":
        raw["instances"]["g5.xlarge"]["spot_hourly"] = 2.0
        return "spot_hourly is above on_demand_hourly"
    if case == "negative_price":
        raw["instances"]["t3a.medium"]["on_demand_hourly"] = -0.04
        return "t3a.medium.on_demand_hourly"
    if case == "price_as_text":
        raw["instances"]["m6a.large"]["spot_hourly"] = "0.04"
        return "m6a.large.spot_hourly"
    if case == "unpriced_group_type":
        raw["ray_groups"]["gpu"]["instance_types"].append("p4d.24xlarge")
        return "p4d.24xlarge"
    if case == "unknown_market":
        raw["ray_groups"]["cpu"]["market"] = "reserved"
        return "ray_groups.cpu.market"
    if case == "zero_service":
        raw["services"]["nat_gateway_hourly"] = 0
        return "services.nat_gateway_hourly"
    if case == "no_version":
        del raw["version"]
        return "version"
    if case == "no_instances":
        raw["instances"] = {}
        return "instances"
    if case == "negative_local":
        raw["local"]["hourly_usd"] = -1
        return "local.hourly_usd"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "spot_above_on_demand",
        "negative_price",
        "price_as_text",
        "unpriced_group_type",
        "unknown_market",
        "zero_service",
        "no_version",
        "no_instances",
        "negative_local",
    ],
)
def test_a_bad_table_is_refused(tmp_path: Path, case: str) -> None:
    raw = _raw()
    expected = _broken(raw, case)
    path = _write(tmp_path, raw)
    with pytest.raises(PriceError) as error:
        load_prices(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_unreadable_tables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PriceError, match="cannot read"):
        load_prices(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("instances: [unclosed\n")
    with pytest.raises(PriceError, match="cannot read"):
        load_prices(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(PriceError, match="mapping"):
        load_prices(listed)


def test_an_unquoted_date_version_is_read_as_text(tmp_path: Path) -> None:
    version = _raw()["version"]
    text = PRICES_FILE.read_text().replace(f'version: "{version}"', f"version: {version}")
    assert text != PRICES_FILE.read_text()
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    assert load_prices(path).version == version
