"""A small chat web app that streams the layer chain's answers to a browser page (lesson 05).

`start_webchat(upstream)` runs it as its own process (like the simulated service) and returns a
`WebChatService` whose `url` is the page. `python -m labkit.lessons.webchat --port 0 --upstream URL` does the same
from a shell. The app itself is `labkit.lessons.webchat.app.create_app`.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import httpx

from labkit.endpoint import LOCAL_API_KEY
from labkit.lab.processes import Child, Service, child_env

__all__ = ["WebChatService", "start_webchat"]

_READY_LINE = re.compile(r"labkit\.lessons\.webchat ready on (http://\S+)")


@dataclass(eq=False, repr=False)
class WebChatService(Service):
    """The chat app's process; `url` serves the page, `url + "/api/chat"` the streamed answers."""

    upstream: str = ""
    model: str = ""

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def chat_url(self) -> str:
        return f"{self.url}/api/chat"

    def browser_url(self) -> str:
        """Where a learner's browser reaches the page: through JupyterHub's proxy on Binder, else directly."""
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
        if prefix:
            return f"{prefix.rstrip('/')}/proxy/{self.port}/"
        return f"{self.url}/"

    def stats(self) -> dict[str, Any]:
        """The app's metrics: a summary and the last requests (outcome, TTFT, tokens ...)."""
        response = httpx.get(f"{self.url}/api/stats", timeout=10.0)
        response.raise_for_status()
        return response.json()


def start_webchat(
    upstream: str,
    *,
    model: str = "gpt-4o",
    api_key: str = LOCAL_API_KEY,
    max_tokens: int = 400,
    first_token_timeout_s: float = 30.0,
    total_timeout_s: float = 300.0,
    timeout: float = 20.0,
) -> WebChatService:
    """Start the chat app on a free loopback port, streaming from `upstream` (a base URL ending in /v1)."""
    argv = [sys.executable, "-m", "labkit.lessons.webchat", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--upstream", upstream, "--model", model, "--max-tokens", str(max_tokens)]
    argv += ["--first-token-timeout", str(first_token_timeout_s), "--total-timeout", str(total_timeout_s)]
    argv += ["--parent-pid", str(os.getpid())]
    env = child_env()
    env["OPENAI_API_KEY"] = api_key  # not on the command line, where `ps` shows it
    child = Child("labkit.lessons.webchat", argv, env=env)

    def ready_url() -> str | None:
        match = _READY_LINE.search(child.stdout.tail(lines=50))
        return match.group(1).rstrip("/") if match else None

    url = child.wait_ready(ready_url, timeout)
    service = WebChatService(name="webchat", url=url, upstream=upstream, model=model)
    service._adopt(child)
    return service
