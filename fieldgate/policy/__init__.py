"""Policy engines: the Rego policy pack evaluated in-process or on an OPA server.

Rego decides what is allowed and who must approve; Python builds the inputs (facts),
runs the engines and logs every decision. Three decisions:

- ``data.fieldgate.rollout.decision`` (:data:`ROLLOUT`) with :func:`rollout_input`,
- ``data.fieldgate.approvals.decision`` (:data:`APPROVALS`) with :func:`approvals_input`,
- ``data.fieldgate.tools.decision`` (:data:`TOOLS`) with :func:`tool_input`.

Engines (:class:`PolicyEngine`), all failing closed: :class:`RegorusEngine` (regorus,
in-process, the default), :class:`RegoEngine` (regopy, in-process),
:class:`OpaServerEngine` (an OPA server) and :class:`GoOpaEngine` (OPA's own evaluator
in-process, the reference of the conformance suite; test extra only).
:func:`configured_engine` makes the one ``FIELDGATE_POLICY_ENGINE`` names, paired in a
:class:`CrossCheckEngine` for critical plans with ``FIELDGATE_POLICY_CROSSCHECK=1``.
:class:`PolicyGate` writes each decision to the audit log.
"""

from fieldgate.policy._build import (
    approval_timing,
    approvals_input,
    relation_of,
    rollout_input,
    tool_input,
    verify_approvals,
    verify_artifact,
)
from fieldgate.policy._choose import configured_engine
from fieldgate.policy._crosscheck import CrossCheckEngine
from fieldgate.policy._decision import (
    ApprovalNeed,
    ApprovalsDecision,
    IgnoredApproval,
    OperationDecision,
    RoleCount,
    RolloutDecision,
    ToolDecision,
    Violation,
    read_decision,
)
from fieldgate.policy._engine import (
    APPROVALS,
    DECISIONS,
    OPERATIONS,
    ROLLOUT,
    TOOLS,
    PolicyEngine,
    RegoTestResult,
    fail_closed,
    normalize_path,
)
from fieldgate.policy._gate import AuditSink, PolicyGate, input_digest, input_document
from fieldgate.policy._input import (
    ApprovalFact,
    ApprovalsInput,
    ArtifactCheck,
    OperationInput,
    RoleNeed,
    RolloutInput,
    TargetGroup,
    ToolInput,
)
from fieldgate.policy._opa import OpaServerEngine
from fieldgate.policy._opago import GoOpaEngine, run_opa_tests
from fieldgate.policy._pack import (
    PolicyModule,
    PolicyPack,
    PolicyRevision,
    RuleInfo,
    SourceProblem,
    check_v1,
    default_policy_dir,
)
from fieldgate.policy._rego import RegoEngine, run_rego_tests
from fieldgate.policy._regorus import RegorusEngine, run_regorus_tests

__all__ = [
    "APPROVALS",
    "DECISIONS",
    "OPERATIONS",
    "ROLLOUT",
    "TOOLS",
    "ApprovalFact",
    "ApprovalNeed",
    "ApprovalsDecision",
    "ApprovalsInput",
    "ArtifactCheck",
    "AuditSink",
    "CrossCheckEngine",
    "GoOpaEngine",
    "IgnoredApproval",
    "OpaServerEngine",
    "OperationDecision",
    "OperationInput",
    "PolicyEngine",
    "PolicyGate",
    "PolicyModule",
    "PolicyPack",
    "PolicyRevision",
    "RegoEngine",
    "RegoTestResult",
    "RegorusEngine",
    "RoleCount",
    "RoleNeed",
    "RolloutDecision",
    "RolloutInput",
    "RuleInfo",
    "SourceProblem",
    "TargetGroup",
    "ToolDecision",
    "ToolInput",
    "Violation",
    "approval_timing",
    "approvals_input",
    "check_v1",
    "configured_engine",
    "default_policy_dir",
    "fail_closed",
    "input_digest",
    "input_document",
    "normalize_path",
    "read_decision",
    "relation_of",
    "rollout_input",
    "run_opa_tests",
    "run_rego_tests",
    "run_regorus_tests",
    "tool_input",
    "verify_approvals",
    "verify_artifact",
]
