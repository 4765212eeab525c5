"""The engine a configuration asks for: ``FIELDGATE_POLICY_ENGINE`` and the cross-check."""

from __future__ import annotations

from fieldgate.config import Config
from fieldgate.policy._crosscheck import CrossCheckEngine
from fieldgate.policy._engine import PolicyEngine
from fieldgate.policy._opa import OpaServerEngine
from fieldgate.policy._pack import PolicyPack
from fieldgate.policy._rego import RegoEngine
from fieldgate.policy._regorus import RegorusEngine


def configured_engine(config: Config, pack: PolicyPack | None = None) -> PolicyEngine:
    """The engine ``config`` names, over ``pack`` (default: the shipped pack).

    With :attr:`Config.policy_crosscheck` the engine is paired with a second
    in-process one (regopy beside regorus or an OPA server, regorus beside regopy)
    for the decisions on critical plans.
    """
    pack = pack if pack is not None else PolicyPack.load()
    engine: PolicyEngine
    if config.policy_engine == "opa" and config.opa_url:
        engine = OpaServerEngine(config.opa_url, pack)
    elif config.policy_engine == "regopy":
        engine = RegoEngine(pack)
    else:
        engine = RegorusEngine(pack)
    if not config.policy_crosscheck:
        return engine
    second: PolicyEngine = RegorusEngine(pack) if engine.name == "regopy" else RegoEngine(pack)
    return CrossCheckEngine(engine, second)
