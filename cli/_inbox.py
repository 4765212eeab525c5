"""The approval inbox served by ``fieldgate serve``: pages, their JSON API and live updates.

The browser signs: the server hands out the exact bytes the CLI would sign (the canonical
JSON of the unsigned approval or edit record), the page signs them with the approver's own
ed25519 key, which never leaves the browser, and the server hands the signed record to the
run's approval node, which checks the signature and counts it by policy as it does for the
CLI. A submission the server can already tell will not verify (another person's name, a
key that is not the person's enrolled one, a signature that does not verify, another
revision) is refused and audited as refused before it reaches the run.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError

from fieldgate.agents.planner import PlanDraft
from fieldgate.approvals import Approval, PlanEdit, Signed, draft_hash
from fieldgate.audit import ActorKind, EventKind
from fieldgate.cli._approvals import decision_took, key_not_enrolled
from fieldgate.contract import canonical_json, validation_problems
from fieldgate.errors import DecisionRefused, FieldgateError, NotFound
from fieldgate.policy import PolicyPack
from fieldgate.store import Run, Store
from fieldgate.tokens import TokenBook
from fieldgate.trust import StoredKey

if TYPE_CHECKING:
    from fieldgate.graphs.runner import Orchestrator, RunView

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        # No string ever becomes markup: assigning one to innerHTML throws.
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
"""Every response's CSP: the page's own scripts and styles only, no inline code, no markup
made from strings."""

STATIC = {
    "inbox.js": "text/javascript",
    "run.js": "text/javascript",
    "common.js": "text/javascript",
    "inbox.css": "text/css",
}
"""The page assets served under ``/static/`` (nothing else is)."""

R = TypeVar("R", bound=Signed)

VIA = "inbox"
"""How audit events of the inbox say where a decision came from."""


class DecisionRequest(BaseModel):
    """What an approver wants to sign: the server answers with the bytes to sign."""

    decision: Literal["approve", "reject"]
    """approve or reject."""
    comment: str = Field(default="", max_length=4000)
    """Why (signed with the decision)."""
    key_id: str | None = Field(default=None, pattern=r"^ed25519:[0-9a-f]{16}$")
    """The key the page will sign with (default: the person's enrolled approver key); a
    decision signed with any other key than the enrolled one is refused when it comes back."""


class EditRequest(BaseModel):
    """An edit an approver wants to sign: the plan as they want it."""

    draft: dict[str, Any]
    """The plan draft (a ``PlanDraft``)."""
    comment: str = Field(default="", max_length=4000)
    """Why (signed with the edit)."""
    key_id: str | None = Field(default=None, pattern=r"^ed25519:[0-9a-f]{16}$")
    """The key the page will sign with (default: the person's enrolled approver key)."""


class SignedSubmission(BaseModel):
    """A record signed in the browser."""

    payload: str = Field(max_length=200_000)
    """The canonical JSON the server handed out, exactly as signed."""
    signature: str = Field(max_length=200)
    """Base64 ed25519 signature over the payload's UTF-8 bytes."""
    draft: dict[str, Any] | None = None
    """For an edit: the draft the payload's ``draft_hash`` binds."""


def _asset(name: str) -> bytes:
    return files("fieldgate.data").joinpath("inbox", name).read_bytes()


def _roles_needed(view: RunView) -> list[dict[str, Any]]:
    """The roles the run still waits for (``[{role, count}]``)."""
    request = view.interrupts[0].value if view.interrupts else {}
    missing = request.get("approvals_missing") if isinstance(request, dict) else None
    return list(missing or [])


class Inbox:
    """The state the routes share: the orchestrator (used by one request at a time), the
    tokens and the roster."""

    def __init__(self, orchestrator: Orchestrator, tokens: TokenBook) -> None:
        self.orchestrator = orchestrator
        self.tokens = tokens
        self.lock = threading.RLock()
        ctx = orchestrator.ctx
        self.roster: dict[str, list[str]] = dict(ctx.roster) or dict(
            PolicyPack.load().data.get("fieldgate", {}).get("roster", {})
        )

    @property
    def store(self) -> Store:
        """The orchestrator's store."""
        return self.orchestrator.ctx.store

    def roles(self, person: str) -> list[str]:
        """The roles the roster gives ``person``."""
        return list(self.roster.get(person, []))

    def waits_for(self, person: str, view: RunView) -> bool:
        """Whether the run waits for a decision of one of ``person``'s roles."""
        mine = set(self.roles(person))
        return bool(view.interrupts) and any(
            need.get("role") in mine for need in _roles_needed(view)
        )

    # ------------------------------------------------------------------ reading

    def me(self, person: str) -> dict[str, Any]:
        trust = self.store.keys.judge(self.orchestrator.ctx.root)
        key = trust.current(person, "approver")
        return {
            "person": person,
            "roles": self.roles(person),
            "key_id": key.key_id if key else None,
            "key_problem": None if key else trust.why_not(person, "approver"),
        }

    def waiting(self, person: str) -> list[dict[str, Any]]:
        cards = []
        for run in self.store.runs.list(("awaiting_approval",)):
            view = self.orchestrator.view(run.thread_id)
            if self.waits_for(person, view):
                cards.append(self.card(run, view))
        return cards

    def waiting_run(self, person: str, plan_id: str) -> tuple[Run, RunView]:
        """The run of ``plan_id``, which must wait for one of ``person``'s roles."""
        run = self._run(plan_id)
        view = self.orchestrator.view(run.thread_id)
        if not view.interrupts:
            state = f"{run.status}, {run.outcome}" if run.outcome else run.status
            raise HTTPException(409, f"plan {run.plan_id} is not awaiting approval ({state})")
        if not self.waits_for(person, view):
            raise HTTPException(
                403, f"plan {run.plan_id} does not wait for a decision of {person}'s roles"
            )
        return run, view

    def _run(self, plan_id: str) -> Run:
        try:
            run: Run = self.store.runs.for_plan(plan_id)
        except NotFound:
            raise HTTPException(404, f"no rollout plan {plan_id!r}") from None
        return run

    def card(self, run: Run, view: RunView) -> dict[str, Any]:
        """Everything an approver reads about one waiting plan."""
        values = view.values
        plan = values.get("plan") or {}
        findings = values.get("findings") or {}
        counted = values.get("approvals") or {}
        missing = _roles_needed(view)
        request = view.interrupts[0].value if view.interrupts else {}
        sizes = findings.get("wave_sizes") or []
        received = self.store.approvals.for_plan(run.plan_id)
        requester = plan.get("requested_by") or run.actor
        try:
            manifest = self.store.catalog.get(str(plan.get("module")), str(plan.get("version")))
            description = manifest.description
        except FieldgateError:
            description = ""
        return {
            "plan_id": run.plan_id,
            "plan_hash": values.get("plan_hash"),
            "revision": plan.get("revision"),
            "module": plan.get("module"),
            "version": plan.get("version"),
            "intent": plan.get("intent"),
            "requested_by": requester,
            "request": run.request,
            "description": description,
            "rationale": plan.get("rationale", ""),
            "schedule": (plan.get("schedule") or {}).get("mode"),
            "rollback": (plan.get("rollback") or {}).get("version"),
            "waves": [
                {
                    "name": wave.get("name"),
                    "devices": sizes[index] if index < len(sizes) else None,
                    "max_parallel": wave.get("max_parallel"),
                    "gate": wave.get("health_gate") or {},
                }
                for index, wave in enumerate(plan.get("waves") or [])
            ],
            "dry_run": values.get("dry_run") or {},
            "problems": findings.get("problems") or [],
            "warnings": findings.get("warnings") or [],
            "verdict": values.get("decision") or {},
            "decisions": [
                {
                    "approver": approval.approver,
                    "decision": approval.decision.value,
                    "comment": approval.comment,
                    "at": approval.at.isoformat(),
                    "key_id": approval.key_id,
                    "this_revision": approval.plan_hash == values.get("plan_hash"),
                }
                for approval in received
            ],
            "counted": counted.get("counted") or [],
            "ignored": counted.get("ignored") or [],
            "missing": missing,
            "who_counts": {
                need.get("role"): sorted(
                    person
                    for person, roles in self.roster.items()
                    if need.get("role") in roles and person != requester
                )
                for need in missing
            },
            "deadline": request.get("deadline") if isinstance(request, dict) else None,
            "draft": {k: plan[k] for k in PlanDraft.model_fields if k in plan},
        }

    def runs(self) -> list[dict[str, Any]]:
        return [
            {
                "plan_id": run.plan_id,
                "status": run.status,
                "outcome": run.outcome,
                "actor": run.actor,
                "request": run.request,
                "updated_at": run.updated_at.isoformat(),
            }
            for run in reversed(self.store.runs.list()[-20:])
        ]

    def run_status(self, plan_id: str) -> dict[str, Any]:
        """One run as ``fieldgate status`` tells it: waves, devices per state, outcome."""
        run = self._run(plan_id)
        view = self.orchestrator.view(run.thread_id)
        values = view.values
        plan = values.get("plan") or {}
        sizes = (values.get("findings") or {}).get("wave_sizes") or []
        executed = {
            wave.get("index"): wave for wave in (values.get("execution") or {}).get("waves") or []
        }
        waves = []
        for index, wave in enumerate(plan.get("waves") or []):
            done = executed.get(index) or {}
            waves.append(
                {
                    "name": wave.get("name"),
                    "status": done.get("status", "pending"),
                    "devices": len(done.get("devices") or [])
                    or (sizes[index] if index < len(sizes) else 0),
                    "applied": len(done.get("applied") or []),
                    "failed": len(done.get("failed") or []),
                    "unreachable": len(done.get("unreachable") or []),
                    "gate": (done.get("gate") or {}).get("reason", ""),
                }
            )
        events = self.store.audit.events(plan_id=run.plan_id)[-12:]
        return {
            "plan_id": run.plan_id,
            "request": run.request,
            "actor": run.actor,
            "module": plan.get("module"),
            "version": plan.get("version"),
            "revision": plan.get("revision"),
            "status": run.status,
            "outcome": run.outcome,
            "reasons": values.get("reasons") or [],
            "missing": _roles_needed(view),
            "counted": (values.get("approvals") or {}).get("counted") or [],
            "waves": waves,
            "events": [
                {"seq": e.seq, "at": e.at.isoformat(), "kind": str(e.kind), "actor": e.actor}
                for e in reversed(events)
            ],
        }

    def head(self) -> int:
        """The audit log's last sequence number: every decision and step moves it."""
        event = self.store.audit.head()
        return event.seq if event is not None else 0

    # ------------------------------------------------------------------ deciding

    def _key(self, person: str) -> StoredKey:
        trust = self.store.keys.judge(self.orchestrator.ctx.root)
        key = trust.current(person, "approver")
        if key is None:
            raise DecisionRefused(
                f"{person} has no trusted approver key: {trust.why_not(person, 'approver')}"
            )
        return key

    def to_sign(self, person: str, plan_id: str, asked: DecisionRequest) -> dict[str, Any]:
        """The exact bytes (as text) ``person`` signs to decide on ``plan_id``."""
        _, view = self.waiting_run(person, plan_id)
        key_id = asked.key_id or self._key(person).key_id
        record = self.orchestrator.approval_for(view, person, key_id, asked.decision, asked.comment)
        return {"payload": _payload(record), "key_id": key_id}

    def edit_to_sign(self, person: str, plan_id: str, asked: EditRequest) -> dict[str, Any]:
        """The exact bytes ``person`` signs to replace the waiting revision with a draft."""
        _, view = self.waiting_run(person, plan_id)
        key_id = asked.key_id or self._key(person).key_id
        try:
            draft = PlanDraft.model_validate(asked.draft)
        except ValidationError as exc:
            raise HTTPException(422, f"draft: {validation_problems(exc)}") from None
        record = self.orchestrator.edit_for(view, person, key_id, draft, asked.comment)
        return {
            "payload": _payload(record),
            "key_id": key_id,
            "draft": draft.model_dump(mode="json"),
        }

    def _check_signed(self, person: str, view: RunView, record: Approval | PlanEdit) -> None:
        """Refuse what cannot verify as ``person``'s decision on the waiting revision."""
        signer = record.approver if isinstance(record, Approval) else record.editor
        if signer != person:
            raise DecisionRefused(f"the record is signed as {signer}, but {person} is signed in")
        if (record.plan_id, record.plan_hash) != (view.plan_id, view.values.get("plan_hash")):
            raise DecisionRefused("the record names another plan revision than the one waiting")
        not_enrolled = key_not_enrolled(self.orchestrator, person, record.key_id)
        if not_enrolled is not None:
            raise DecisionRefused(not_enrolled)
        key = self._key(person)
        if not record.signature_valid(key.public_b64):
            raise DecisionRefused(
                f"the signature does not verify with {person}'s approver key {key.key_id}"
            )

    def _deciding(self, person: str, plan_id: str, signed: SignedSubmission) -> tuple[Run, RunView]:
        """The run ``person`` submits a decision on; a stranger's submission is audited."""
        try:
            return self.waiting_run(person, plan_id)
        except HTTPException as exc:
            if exc.status_code == 403:
                self._audit_refusal(person, self._run(plan_id), str(exc.detail), signed)
            raise

    def _audit_refusal(self, person: str, run: Run, reason: str, signed: SignedSubmission) -> None:
        self.store.audit.append(
            EventKind.approval,
            ActorKind.human,
            person,
            {"refused": reason, "via": VIA, "submitted": signed.payload[:2000]},
            plan_id=run.plan_id,
            thread_id=run.thread_id,
            at=self.orchestrator.ctx.people_now(),
        )

    def _refuse(self, person: str, run: Run, reason: str, signed: SignedSubmission) -> JSONResponse:
        self._audit_refusal(person, run, reason, signed)
        return JSONResponse({"counted": False, "refused": reason}, status_code=422)

    def submit(self, person: str, plan_id: str, signed: SignedSubmission) -> JSONResponse:
        """Hand a browser-signed approval or rejection to the run; say whether it counts."""
        run, view = self._deciding(person, plan_id, signed)
        try:
            record = _parse(Approval, signed)
            self._check_signed(person, view, record)
        except DecisionRefused as exc:
            return self._refuse(person, run, str(exc), signed)
        after = self.orchestrator.answer_signed(run.thread_id, record)
        took, reasons = decision_took(self.orchestrator, after, person)
        return JSONResponse(
            {
                "counted": took,
                "reasons": reasons,
                "status": after.status,
                "outcome": after.outcome,
                "missing": (after.values.get("approvals") or {}).get("missing") or [],
            }
        )

    def submit_edit(self, person: str, plan_id: str, signed: SignedSubmission) -> JSONResponse:
        """Hand a browser-signed edit to the run: a new revision, validated and decided again."""
        run, view = self._deciding(person, plan_id, signed)
        try:
            record = _parse(PlanEdit, signed)
            self._check_signed(person, view, record)
            try:
                draft = PlanDraft.model_validate(signed.draft)
            except ValidationError as exc:
                raise DecisionRefused(f"draft: {validation_problems(exc)}") from None
            # As the run will hash it: JSON through a browser turns 1.0 into 1.
            if record.draft_hash != draft_hash(draft.model_dump(mode="json")):
                raise DecisionRefused("the draft is not the one the edit record signs")
        except DecisionRefused as exc:
            return self._refuse(person, run, str(exc), signed)
        after = self.orchestrator.edit_signed(run.thread_id, record, draft)
        return JSONResponse(
            {
                "edited": after.values.get("plan_hash") != view.values.get("plan_hash"),
                "status": after.status,
                "outcome": after.outcome,
                "revision": (after.values.get("plan") or {}).get("revision"),
            }
        )


def _payload(record: Signed) -> str:
    """The canonical JSON a record's key signs, as text (UTF-8 of it is what is signed)."""
    try:
        return canonical_json(record.signing_payload()).decode("utf-8")
    except UnicodeError:  # a lone surrogate in a comment cannot be UTF-8
        raise HTTPException(422, "comment: not valid Unicode text") from None


def _parse(model: type[R], signed: SignedSubmission) -> R:
    """The record the browser signed, with its signature; the payload must be canonical."""
    try:
        record = model.model_validate_json(signed.payload)
    except ValidationError as exc:
        raise DecisionRefused(f"payload: {validation_problems(exc)}") from None
    if record.signature or _payload(record) != signed.payload:
        raise DecisionRefused("the payload is not the canonical JSON the server handed out")
    return record.model_copy(update={"signature": signed.signature})


_bearer = HTTPBearer(auto_error=False)


def signed_in(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Who the request's bearer token belongs to; 401 without a token that is someone's."""
    inbox: Inbox = request.app.state.inbox
    person = inbox.tokens.person(credentials.credentials if credentials else None)
    if person is None:
        raise HTTPException(
            401,
            "sign in with your inbox token (`fieldgate serve token --as YOU`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return person


Person = Annotated[str, Depends(signed_in)]
"""The signed-in person, as a route parameter."""


def inbox_app(
    orchestrator: Orchestrator, tokens: TokenBook, *, poll_seconds: float = 0.5
) -> FastAPI:
    """The inbox's web application over ``orchestrator``, people signing in with ``tokens``."""
    inbox = Inbox(orchestrator, tokens)
    app = FastAPI(title="fieldgate inbox", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.inbox = inbox

    @app.middleware("http")
    async def secure_headers(request: Request, call_next: Callable[..., Any]) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(FieldgateError)
    async def fieldgate_error(request: Request, exc: FieldgateError) -> JSONResponse:
        status = (
            404 if isinstance(exc, NotFound) else 422 if isinstance(exc, DecisionRefused) else 409
        )
        return JSONResponse({"detail": str(exc)}, status_code=status)

    def page(name: str) -> Response:
        return Response(_asset(name), media_type="text/html; charset=utf-8")

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return page("index.html")

    @app.get("/runs/{plan_id}", include_in_schema=False)
    def run_page(plan_id: str) -> Response:
        return page("run.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        return Response(_asset(name), media_type=STATIC[name])

    @app.get("/api/me")
    def me(person: Person) -> dict[str, Any]:
        with inbox.lock:
            return inbox.me(person)

    @app.get("/api/plans")
    def plans(person: Person) -> list[dict[str, Any]]:
        with inbox.lock:
            return inbox.waiting(person)

    @app.get("/api/plans/{plan_id}")
    def plan(plan_id: str, person: Person) -> dict[str, Any]:
        with inbox.lock:
            return inbox.card(*inbox.waiting_run(person, plan_id))

    @app.post("/api/plans/{plan_id}/to-sign")
    def to_sign(plan_id: str, asked: DecisionRequest, person: Person) -> dict[str, Any]:
        with inbox.lock:
            return inbox.to_sign(person, plan_id, asked)

    @app.post("/api/plans/{plan_id}/decision")
    def decision(plan_id: str, signed: SignedSubmission, person: Person) -> JSONResponse:
        with inbox.lock:
            return inbox.submit(person, plan_id, signed)

    @app.post("/api/plans/{plan_id}/edit-to-sign")
    def edit_to_sign(plan_id: str, asked: EditRequest, person: Person) -> dict[str, Any]:
        with inbox.lock:
            return inbox.edit_to_sign(person, plan_id, asked)

    @app.post("/api/plans/{plan_id}/edit")
    def edit(plan_id: str, signed: SignedSubmission, person: Person) -> JSONResponse:
        with inbox.lock:
            return inbox.submit_edit(person, plan_id, signed)

    @app.get("/api/runs")
    def runs(person: Person) -> list[dict[str, Any]]:
        with inbox.lock:
            return inbox.runs()

    @app.get("/api/runs/{plan_id}")
    def run_status(plan_id: str, person: Person) -> dict[str, Any]:
        with inbox.lock:
            return inbox.run_status(plan_id)

    @app.get("/api/events")
    async def events(request: Request, person: Person) -> StreamingResponse:
        async def changes() -> AsyncIterator[str]:
            last: int | None = None
            quiet = 0.0
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                seq = await asyncio.to_thread(inbox.head)
                if seq != last:
                    last, quiet = seq, 0.0
                    yield f"event: change\ndata: {json.dumps({'seq': seq})}\n\n"
                elif quiet >= 15:
                    quiet = 0.0
                    yield ": still here\n\n"
                await asyncio.sleep(poll_seconds)
                quiet += poll_seconds

        return StreamingResponse(
            changes(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )

    return app
