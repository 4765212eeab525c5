"""The one place that builds chat models: ``offline`` or ``openai:NAME``.

``openai:NAME`` is any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server, LM Studio, or ``fieldgate serve-model``) through langchain-openai's
``ChatOpenAI`` over the ``openai`` client. The environment configures it:

- ``OPENAI_BASE_URL``: the endpoint (OpenAI's own when unset);
- ``OPENAI_API_KEY``: its key (local servers usually take any);
- ``FIELDGATE_MODEL_TIMEOUT``: seconds one request may take (default 60);
- ``FIELDGATE_MODEL_RETRIES``: how often the client retries a timeout, a dropped
  connection, a 429 or a 5xx, with exponential backoff (default 2).

Those are transport retries. An answer that arrives but is invalid (bad JSON, a schema
violation) is fed back to the model instead, up to ``Settings.model_retries`` times.
"""

from __future__ import annotations

import os

from langchain_core.language_models import BaseChatModel

from fieldgate.agents.offline import OfflineChatModel
from fieldgate.errors import FieldgateError

DEFAULT_MODEL = "offline"
DEFAULT_TIMEOUT_S = 60.0
"""Seconds one model request may take before the client gives up on it."""
DEFAULT_RETRIES = 2
"""Retries of a request that timed out, was rate limited or hit a server error."""
OPENAI_PREFIX = "openai:"


class ModelUnavailable(FieldgateError):
    """The model named cannot be built here."""


def model_name_from_env() -> str:
    """The model to use: ``FIELDGATE_MODEL``, else the offline model."""
    return os.environ.get("FIELDGATE_MODEL") or DEFAULT_MODEL


def model_timeout_from_env() -> float:
    """Seconds per model request: ``FIELDGATE_MODEL_TIMEOUT``, else 60."""
    raw = os.environ.get("FIELDGATE_MODEL_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ModelUnavailable(f"FIELDGATE_MODEL_TIMEOUT={raw!r}: expected seconds above 0")
    return seconds


def model_retries_from_env() -> int:
    """Transient-error retries per request: ``FIELDGATE_MODEL_RETRIES``, else 2."""
    raw = os.environ.get("FIELDGATE_MODEL_RETRIES", "").strip()
    if not raw:
        return DEFAULT_RETRIES
    if not raw.isdigit():
        raise ModelUnavailable(f"FIELDGATE_MODEL_RETRIES={raw!r}: expected a count of 0 or more")
    return int(raw)


def make_model(
    name: str | None = None,
    *,
    timeout_s: float | None = None,
    max_retries: int | None = None,
) -> BaseChatModel:
    """Build the chat model called ``name`` (``FIELDGATE_MODEL`` when not given).

    ``offline`` is the deterministic model that needs no network. ``openai:NAME`` is any
    OpenAI-compatible endpoint; see the module docstring for the environment it reads.
    ``timeout_s`` and ``max_retries`` override ``FIELDGATE_MODEL_TIMEOUT`` and
    ``FIELDGATE_MODEL_RETRIES``.
    """
    name = name or model_name_from_env()
    if name == "offline":
        return OfflineChatModel()
    model_id = name.removeprefix(OPENAI_PREFIX)
    if not name.startswith(OPENAI_PREFIX) or not model_id:
        raise ModelUnavailable(f"unknown model {name!r} (use 'offline' or 'openai:NAME')")
    base_url = os.environ.get("OPENAI_BASE_URL") or None
    api_key = os.environ.get("OPENAI_API_KEY") or None
    if base_url is None and api_key is None:
        raise ModelUnavailable(
            f"{name} needs OPENAI_API_KEY, or OPENAI_BASE_URL for a local server "
            "(e.g. `fieldgate serve-model` and OPENAI_BASE_URL=http://127.0.0.1:PORT/v1)"
        )
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=model_id,
        base_url=base_url,
        # Local servers (vLLM, Ollama, llama.cpp, LM Studio) accept any key.
        api_key=api_key or "not-needed",
        timeout=timeout_s if timeout_s is not None else model_timeout_from_env(),
        max_retries=max_retries if max_retries is not None else model_retries_from_env(),
        temperature=0,
        # Every compatible server speaks chat completions; few speak the Responses API.
        use_responses_api=False,
        # Usage arrives in the last chunk when a caller streams (LangGraph's messages mode).
        stream_usage=True,
    )
