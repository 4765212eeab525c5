"""The one place that builds chat models: ``offline`` or ``openai:NAME``.

``openai:NAME`` is any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
llama.cpp server, LM Studio, or ``fieldgate serve-model``) through langchain-openai's
``ChatOpenAI`` over the ``openai`` client. :class:`~fieldgate.config.Config` configures it
(from the environment by default):

- ``openai_base_url`` (``OPENAI_BASE_URL``): the endpoint (OpenAI's own when unset);
- ``openai_api_key`` (``OPENAI_API_KEY``): its key (local servers usually take any);
- ``model_timeout_s`` (``FIELDGATE_MODEL_TIMEOUT``): seconds one request may take
  (default 60);
- ``model_retries`` (``FIELDGATE_MODEL_RETRIES``): how often the client retries a timeout,
  a dropped connection, a 429 or a 5xx, with exponential backoff (default 2).

Those are transport retries. An answer that arrives but is invalid (bad JSON, a schema
violation) is fed back to the model instead, up to ``Settings.model_retries`` times.
"""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel

from fieldgate.agents.offline import OfflineChatModel
from fieldgate.config import Config
from fieldgate.errors import ModelUnavailable

OPENAI_PREFIX = "openai:"


def make_model(
    name: str | None = None,
    *,
    timeout_s: float | None = None,
    max_retries: int | None = None,
    config: Config | None = None,
) -> BaseChatModel:
    """Build the chat model called ``name`` (``config.model`` when not given).

    ``offline`` is the deterministic model that needs no network. ``openai:NAME`` is any
    OpenAI-compatible endpoint; see the module docstring for the settings it reads from
    ``config`` (default: :meth:`Config.from_env`). ``timeout_s`` and ``max_retries``
    override ``config.model_timeout_s`` and ``config.model_retries``.
    """
    config = config or Config.from_env()
    name = name or config.model
    if name == "offline":
        return OfflineChatModel()
    model_id = name.removeprefix(OPENAI_PREFIX)
    if not name.startswith(OPENAI_PREFIX) or not model_id:
        raise ModelUnavailable(f"unknown model {name!r} (use 'offline' or 'openai:NAME')")
    base_url = config.openai_base_url
    api_key = config.openai_api_key
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
        timeout=timeout_s if timeout_s is not None else config.model_timeout_s,
        max_retries=max_retries if max_retries is not None else config.model_retries,
        temperature=0,
        # Every compatible server speaks chat completions; few speak the Responses API.
        use_responses_api=False,
        # Usage arrives in the last chunk when a caller streams (LangGraph's messages mode).
        stream_usage=True,
    )
