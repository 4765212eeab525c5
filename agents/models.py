"""The one place that builds chat models: ``offline`` or ``openai:NAME``."""

from __future__ import annotations

import os

from fieldgate.agents.offline import OfflineChatModel
from langchain_core.language_models import BaseChatModel

from fieldgate.errors import FieldgateError

DEFAULT_MODEL = "offline"


class ModelUnavailable(FieldgateError):
    """The model named cannot be built here."""


def model_name_from_env() -> str:
    """The model to use: ``FIELDGATE_MODEL``, else the offline model."""
    return os.environ.get("FIELDGATE_MODEL") or DEFAULT_MODEL


def make_model(name: str | None = None, *, timeout_s: float = 60.0) -> BaseChatModel:
    """Build the chat model called ``name``.

    ``offline`` is the deterministic model that needs no network. ``openai:NAME`` is
    any OpenAI-compatible endpoint: ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` come
    from the environment (OpenAI, vLLM, Ollama, llama.cpp server, LM Studio).
    """
    name = name or model_name_from_env()
    if name == "offline":
        return OfflineChatModel()
    if name.startswith("openai:") and len(name) > len("openai:"):
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(
            model=name.removeprefix("openai:"),
            base_url=os.environ.get("OPENAI_BASE_URL"),
            api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
            timeout=timeout_s,
            max_retries=3,
            temperature=0,
        )
    raise ModelUnavailable(f"unknown model {name!r} (use 'offline' or 'openai:NAME')")
