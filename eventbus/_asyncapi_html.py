"""A self-contained HTML page of an AsyncAPI document (``eventbus asyncapi --docs-port``):
the server, each operation with its channel and messages, each message with its headers,
payload schema and examples. No script and nothing fetched: it reads offline and behind
any firewall. For AsyncAPI's own renderers, serve them ``/asyncapi.json``."""

from __future__ import annotations

import json
from html import escape
from typing import Any


def render_html(document: dict[str, Any]) -> str:
    """The page for ``document`` (as :func:`eventbus.asyncapi.asyncapi_document` makes it)."""
    info = document.get("info", {})
    title = escape(f"{info.get('title', 'service')} {info.get('version', '')}".strip())
    parts = [f"<h1>{title}</h1>"]
    if info.get("description"):
        parts.append(f"<p>{escape(info['description'])}</p>")
    for name, server in document.get("servers", {}).items():
        parts.append(
            f"<p>Server <code>{escape(name)}</code>: {escape(server['protocol'])}://"
            f"{escape(server['host'])}{escape(server.get('pathname', ''))}</p>"
        )
    parts.append("<h2>Operations</h2>")
    for op_id, operation in document.get("operations", {}).items():
        channel = _follow(document, operation["channel"])
        messages = [_follow(document, ref) for ref in operation.get("messages", [])]
        links = (
            ", ".join(
                f'<a href="#{escape(_anchor(m["name"]))}">{escape(m["title"])}</a>'
                for m in messages
            )
            or "every message"
        )
        parts.append(
            f'<h3 id="{escape(_anchor(op_id))}">{escape(operation["action"])} '
            f"<code>{escape(channel['address'])}</code></h3>"
            f"<p>{escape(operation.get('summary', ''))}</p><p>Messages: {links}</p>"
        )
    parts.append("<h2>Messages</h2>")
    for message in document.get("components", {}).get("messages", {}).values():
        parts.append(
            f'<h3 id="{escape(_anchor(message["name"]))}">{escape(message["title"])} '
            f"<code>{escape(message['name'])}</code> "
            f"v{escape(str(message.get('x-eventbus-version', '')))}</h3>"
        )
        for key in ("summary", "description"):
            if message.get(key):
                parts.append(f"<p>{escape(message[key])}</p>")
        parts.append(_block("Payload", _inline(document, message["payload"])))
        if "headers" in message:
            parts.append(_block("Headers", message["headers"]))
        for example in message.get("examples", []):
            parts.append(_block(f"Example {example.get('name', '')}", example.get("payload")))
    body = "\n".join(parts)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body>\n{body}\n"
        '<p><a href="asyncapi.json">asyncapi.json</a> · '
        '<a href="asyncapi.yaml">asyncapi.yaml</a></p></body></html>\n'
    )


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "pre{background:#f4f4f4;padding:.75rem;overflow:auto}code{background:#f4f4f4}"
)


def _block(label: str, value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return f"<details><summary>{escape(label)}</summary><pre>{escape(text)}</pre></details>"


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _follow(document: dict[str, Any], node: Any) -> Any:
    """``node`` with a local ``$ref`` followed (once per level)."""
    while isinstance(node, dict) and set(node) == {"$ref"}:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _inline(document: dict[str, Any], schema: Any, depth: int = 0) -> Any:
    """``schema`` with its ``components/schemas`` references replaced by what they name,
    so a reader sees the nested models in place (to a bounded depth: models may recurse)."""
    if isinstance(schema, dict):
        if set(schema) == {"$ref"} and depth < 8:
            return _inline(document, _follow(document, schema), depth + 1)
        return {k: _inline(document, v, depth) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(document, item, depth) for item in schema]
    return schema
