"""An OpenAI-compatible chat-completions server backed by the offline model, and its replay mode.

:mod:`.wire` converts between the OpenAI format and langchain messages, :mod:`.backends`
answers requests (the offline model, or a recording replayed first) and :mod:`.http_server`
serves them over HTTP on loopback.
"""

from fieldgate.agents.offline.server.backends import (
    Backend,
    Exchange,
    OfflineBackend,
    RecordedReply,
    Recording,
    ReplayBackend,
    Reply,
)
from fieldgate.agents.offline.server.http_server import (
    LOOPBACK,
    ModelHTTPServer,
    model_server,
    serve_forever,
)
from fieldgate.agents.offline.server.wire import (
    OFFLINE_MODEL_ID,
    Role,
    completion,
    error_body,
    request_role,
    stream_chunks,
    to_langchain,
)

__all__ = [
    "LOOPBACK",
    "OFFLINE_MODEL_ID",
    "Backend",
    "Exchange",
    "ModelHTTPServer",
    "OfflineBackend",
    "RecordedReply",
    "Recording",
    "ReplayBackend",
    "Reply",
    "Role",
    "completion",
    "error_body",
    "model_server",
    "request_role",
    "serve_forever",
    "stream_chunks",
    "to_langchain",
]
