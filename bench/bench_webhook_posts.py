"""The notifier's posts to client webhooks: our CPU per post through its SSRF-guarded client, against httpx's own
transport (httpcore on anyio and h11, what the guard wrapped until session 17) in the same run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from bench import median, patched_environ

NAME = "webhook_posts"
WIDTHS = (1, 10)  # one post at a time (a notifier worker), ten at once (a batch's worth on one loop)
BODY = b'{"type":"delivery report","status":"delivered","message_id":"123456789","to":"2348030000001"}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer bench"}


def _clients() -> dict[str, Callable[[], Any]]:
    import httpx

    from sms_gateway.adapters.webhook_http import new_webhook_client

    return {
        "guarded StreamTransport (the notifier's)": lambda: new_webhook_client(allow_local=True),
        "httpx's own transport (httpcore)": lambda: httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=3.0), follow_redirects=False, trust_env=False
        ),
    }


def _cpu_per_post(client: Any, url: str, posts: int, width: int) -> float:
    """Our CPU (ms) per post, `width` at a time, on a warm client (its connections already open)."""
    from sms_gateway.adapters import http

    async def post_all(count: int) -> None:
        slots = asyncio.Semaphore(width)

        async def one() -> None:
            async with slots:
                response = await client.post(url, headers=HEADERS, content=BODY)
                if response.status_code != 200:
                    raise RuntimeError(f"the webhook answered {response.status_code}")

        await asyncio.gather(*(one() for _ in range(count)))

    http.run(post_all(2 * width))  # connections opened outside the measurement, as in a warm container
    started = time.process_time()
    http.run(post_all(posts))
    return 1000 * (time.process_time() - started) / posts


def run(quick: bool) -> dict[str, Any]:
    from bench.moto_gateway import client_webhook
    from sms_gateway.adapters import http

    runs, posts = (1, 100) if quick else (5, 400)
    rows: list[dict[str, Any]] = []
    with patched_environ({"ALLOW_HTTP_WEBHOOKS": "true"}), client_webhook() as webhook:
        url = f"http://127.0.0.1:{webhook.server_address[1]}/dlr"
        before = webhook.posts
        samples: dict[tuple[str, int], list[float]] = {}
        for _ in range(runs):
            # Interleaved, so a busy moment on this shared machine hits both clients alike.
            for name, make in _clients().items():
                client = make()
                try:
                    for width in WIDTHS:
                        samples.setdefault((name, width), []).append(_cpu_per_post(client, url, posts, width))
                finally:
                    http.run(client.aclose())
        received = webhook.posts - before
    expected = runs * len(_clients()) * sum(posts + 2 * width for width in WIDTHS)
    if received != expected:
        raise RuntimeError(f"the webhook got {received} posts, {expected} were sent")
    for (name, width), values in samples.items():
        rows.append(
            {"client": name, "in_flight": width, "posts": posts, "runs": runs, "cpu_ms_per_post": median(values)}
        )
    guarded = {row["in_flight"]: row["cpu_ms_per_post"] for row in rows if row["client"].startswith("guarded")}
    own = {row["in_flight"]: row["cpu_ms_per_post"] for row in rows if not row["client"].startswith("guarded")}
    ratios = ", ".join(f"{own[w] / guarded[w]:.1f}x at {w} in flight" for w in WIDTHS)
    return {
        "name": NAME,
        "title": "Client webhook posts: the notifier's CPU per post",
        "command": ".venv/bin/python -m bench --only webhook_posts",
        "target": "figures (no target): CPU per post through the notifier's client, against httpx's own transport",
        "met": None,
        "rows": rows,
        "notes": [
            "Our CPU (time.process_time of this process) per POST of a typical delivery-report notification to a"
            " client webhook on 127.0.0.1, which answers 200 with JSON at once over keep-alive HTTP/1.1 from a"
            " process of its own (bench/helpers.py), so none of its CPU is counted. Warm clients (connections open),"
            f" one thread and its event loop (adapters/http.run), as a notifier worker posts; median of {runs} runs"
            " per client and width, the clients interleaved. Every post was checked to arrive.",
            "guarded StreamTransport: adapters/webhook_http.new_webhook_client, the notifier's client since session"
            " 17 (the SSRF guard dialling vetted addresses, adapters/http_streams.StreamTransport, no cookie jar)."
            " httpx's own transport: httpx.AsyncClient with its default transport, httpcore on anyio and h11, which"
            " the notifier's client wrapped until then (its pool swapped for one with a vetting network backend;"
            " the vetting itself costs nothing on a kept-alive connection).",
            f"httpx's own transport took {ratios} the CPU of the notifier's.",
            "Plain http (the local stack's allowance): TLS would add the same encryption CPU to both.",
        ],
    }
