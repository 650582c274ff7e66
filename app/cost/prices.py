"""The platform's price table (``prices.yaml`` beside this module): hourly rates of the instance
types the cluster uses, the Ray groups' markets and candidate types, a local machine's rate and
the unit rates of the always-on services. Validated when loaded, so that a typo fails at once
instead of pricing a run at zero."""

from __future__ import annotations

import datetime
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

PRICES_FILE = Path(__file__).with_name("prices.yaml")
LOCAL_RATE_ENV = "RAYVISION_LOCAL_NODE_HOURLY_USD"
MARKETS = ("spot", "on-demand")


class PriceError(ValueError):
    """The price table is missing, malformed, or has no price for what was asked."""


def _market(market: str) -> str:
    normal = market.strip().lower().replace("_", "-")
    if normal not in MARKETS:
        raise ValueError(f"unknown market {market!r}: use one of {', '.join(MARKETS)}")
    return normal


@dataclass(frozen=True)
class InstancePrice:
    name: str
    vcpus: int
    gpus: int
    memory_gib: float
    accelerator: str | None
    on_demand_hourly: float
    spot_hourly: float

    def hourly(self, market: str) -> float:
        """USD an hour on ``market``: "spot" or "on-demand" ("on_demand", any case)."""
        return self.spot_hourly if _market(market) == "spot" else self.on_demand_hourly


@dataclass(frozen=True)
class RayGroupPrice:
    name: str
    market: str
    instance_types: tuple[str, ...]


@dataclass(frozen=True)
class PriceTable:
    version: str
    region: str
    currency: str
    instances: dict[str, InstancePrice]
    ray_groups: dict[str, RayGroupPrice]
    services: dict[str, float]
    local_hourly_usd: float
    path: Path = PRICES_FILE

    def instance(self, name: str) -> InstancePrice:
        return _priced(self.instances, name, "instance type", self.path)

    def service(self, name: str) -> float:
        return _priced(self.services, name, "service", self.path)


T = TypeVar("T")


def _priced(table: Mapping[str, T], name: str, kind: str, path: Path) -> T:
    """``table[name]``, or a PriceError naming the price file and what it does price."""
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise PriceError(f"{path}: no price for {kind} {name!r} (known: {known})") from None


def _number(value: Any, where: str, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PriceError(f"{where} must be a number, not {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise PriceError(f"{where} must be {'>= 0' if zero_ok else 'positive'}, not {value!r}")
    return float(value)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise PriceError(f"{where} must be a non-empty mapping")
    return value


def _instance(name: str, body: Any, where: str) -> InstancePrice:
    body = _mapping(body, where)
    accelerator = body.get("accelerator")
    if accelerator is not None and not isinstance(accelerator, str):
        raise PriceError(f"{where}.accelerator must be a name such as T4, or null")
    price = InstancePrice(
        name=name,
        vcpus=int(_number(body.get("vcpus"), f"{where}.vcpus")),
        gpus=int(_number(body.get("gpus"), f"{where}.gpus", zero_ok=True)),
        memory_gib=_number(body.get("memory_gib"), f"{where}.memory_gib"),
        accelerator=accelerator,
        on_demand_hourly=_number(body.get("on_demand_hourly"), f"{where}.on_demand_hourly"),
        spot_hourly=_number(body.get("spot_hourly"), f"{where}.spot_hourly"),
    )
    if price.spot_hourly > price.on_demand_hourly:
        raise PriceError(f"{where}: spot_hourly is above on_demand_hourly")
    if (price.gpus > 0) != (accelerator is not None):
        raise PriceError(f"{where}: an accelerator needs gpus > 0, and gpus > 0 an accelerator")
    return price


def _ray_group(
    name: str, body: Any, where: str, instances: Mapping[str, InstancePrice]
) -> RayGroupPrice:
    body = _mapping(body, where)
    try:
        market = _market(str(body.get("market")))
    except ValueError as exc:
        raise PriceError(f"{where}.market: {exc}") from None
    types = body.get("instance_types")
    if not isinstance(types, list) or not types:
        raise PriceError(f"{where}.instance_types must be a non-empty list")
    missing = sorted(str(t) for t in types if t not in instances)
    if missing:
        raise PriceError(f"{where}.instance_types not priced under instances: {', '.join(missing)}")
    return RayGroupPrice(name, market, tuple(str(t) for t in types))


def _local_rate(configured: float) -> float:
    raw = os.environ.get(LOCAL_RATE_ENV)
    if raw is None or not raw.strip():
        return configured
    try:
        rate = float(raw)
    except ValueError:
        raise PriceError(f"{LOCAL_RATE_ENV}={raw!r} is not a number (USD an hour, >= 0)") from None
    return _number(rate, LOCAL_RATE_ENV, zero_ok=True)


def load_prices(path: Path | None = None) -> PriceTable:
    """The price table at ``path`` (default: prices.yaml beside this module), validated."""
    path = path or PRICES_FILE
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PriceError(f"{path}: cannot read the price table: {exc}") from None
    top = _mapping(raw, str(path))
    for key in ("version", "region", "currency"):
        if isinstance(top.get(key), datetime.date):  # an unquoted version: 2026-12-01
            top = {**top, key: top[key].isoformat()}
        if not isinstance(top.get(key), str) or not top[key]:
            raise PriceError(f"{path}: {key} must be a non-empty string")
    instances = {
        str(name): _instance(str(name), body, f"{path}: instances.{name}")
        for name, body in _mapping(top.get("instances"), f"{path}: instances").items()
    }
    ray_groups = {
        str(name): _ray_group(str(name), body, f"{path}: ray_groups.{name}", instances)
        for name, body in _mapping(top.get("ray_groups"), f"{path}: ray_groups").items()
    }
    services = {
        str(name): _number(value, f"{path}: services.{name}")
        for name, value in _mapping(top.get("services"), f"{path}: services").items()
    }
    local = _mapping(top.get("local"), f"{path}: local")
    local_rate = _number(local.get("hourly_usd"), f"{path}: local.hourly_usd", zero_ok=True)
    return PriceTable(
        version=top["version"],
        region=top["region"],
        currency=top["currency"],
        instances=instances,
        ray_groups=ray_groups,
        services=services,
        local_hourly_usd=_local_rate(local_rate),
        path=path,
    )


def price_table() -> PriceTable:
    """The packaged price table, loaded once per process and local rate."""
    return _packaged_table(os.environ.get(LOCAL_RATE_ENV))


@functools.cache
def _packaged_table(local_rate: str | None) -> PriceTable:
    """Keyed by the local rate's setting: a process that sets it later gets its own table."""
    return load_prices()
