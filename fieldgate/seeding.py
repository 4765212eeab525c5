"""Synthetic fleets for ``fieldgate fleet seed``: realistic, varied and reproducible from a seed."""

from __future__ import annotations

import random

from fieldgate.fleet import Device, FleetInventory, Site

_REGIONS = (
    ("eu-central", "Europe/Berlin", "Sat 01:00-05:00"),
    ("eu-west", "Europe/Paris", "Sun 02:00-04:00"),
    ("eu-north", "Europe/Oslo", "Sun 00:00-03:00"),
    ("us-east", "America/New_York", "Sun 02:00-05:00"),
    ("us-west", "America/Los_Angeles", "Sat 23:00-03:00"),
    ("ap-southeast", "Asia/Singapore", "Sun 01:00-04:00"),
)

# device class -> (arch, memory choices in MiB, modules installed with versions)
_CLASSES: dict[str, tuple[str, tuple[int, ...], dict[str, str]]] = {
    "hvac-gw": ("arm64", (512, 1024), {"edge-runtime": "3.2.0", "hvac-controller": "2.3.4"}),
    "pump-ctl": ("arm64", (256, 512), {"edge-runtime": "3.3.1", "pump-logic": "1.8.0"}),
    "env-sensor": ("armv7", (128, 256), {"edge-runtime": "3.4.0", "air-quality-model": "1.1.0"}),
    "plc-gw": ("amd64", (2048, 4096), {"edge-runtime": "3.4.0", "plc-bridge": "5.0.2"}),
    "camera-node": ("arm64", (4096, 8192), {"edge-runtime": "3.4.0", "vision-inspect": "1.0.0"}),
    "bms-ctl": ("arm64", (1024,), {"edge-runtime": "3.3.1", "battery-policy": "3.0.0"}),
}
_PLACES = ("ber", "muc", "ham", "lyo", "par", "osl", "sto", "nyc", "bos", "sfo", "sea", "sin")


def seed_fleet(sites: int, devices_per_site: int, seed: int) -> FleetInventory:
    """Generate ``sites`` sites with ``devices_per_site`` devices each, the same for one seed."""
    if sites < 1 or devices_per_site < 1:
        raise ValueError("sites and devices per site must be at least 1")
    rng = random.Random(seed)
    site_list: list[Site] = []
    devices: list[Device] = []
    width = max(2, len(str(devices_per_site)))
    for index in range(sites):
        region, timezone, window = _REGIONS[index % len(_REGIONS)]
        site_id = f"{_PLACES[index % len(_PLACES)]}-{index + 1:02d}"
        labels = {"regulated": "true"} if rng.random() < 0.2 else {}
        site_list.append(
            Site(id=site_id, region=region, timezone=timezone, maintenance=[window], labels=labels)
        )
        classes = rng.sample(sorted(_CLASSES), k=rng.randint(1, 3))
        for n in range(1, devices_per_site + 1):
            device_class = classes[(n - 1) % len(classes)]
            arch, memories, installed = _CLASSES[device_class]
            devices.append(
                Device.model_validate(
                    {
                        "id": f"{site_id}-{device_class}-{n:0{width}d}",
                        "site": site_id,
                        "class": device_class,
                        "arch": arch,
                        "memory_mb": rng.choice(memories),
                        "installed": dict(installed),
                    }
                )
            )
    return FleetInventory(sites=site_list, devices=devices)
