"""The portal's HTML: small escaping helpers and the shared layout, with the standard library only.

Every value that did not come from this package goes through `esc` (or a helper that calls it): pages build HTML as
strings, so escaping is the one thing that keeps a sender ID or a URL from becoming markup."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from string import Template


def esc(value: str) -> str:
    """html.escape (quotes too), imported on first use: `html` loads its entity table, which the api function's cold
    start need not pay for requests that never render a page."""
    import html

    return html.escape(value)


def attrs(**values: str | bool | None) -> str:
    """` name="value"` pairs, escaped; True gives a bare attribute, False or None leaves it out. A trailing `_`
    is dropped and `_` becomes `-` (`class_="x"`, `aria_current="page"`)."""
    parts = []
    for raw_name, value in values.items():
        name = raw_name.rstrip("_").replace("_", "-")
        if value is None or value is False:
            continue
        parts.append(f" {name}" if value is True else f' {name}="{esc(str(value))}"')
    return "".join(parts)


def field(
    label: str,
    name: str,
    value: str | None = "",
    *,
    type_: str = "text",
    required: bool = False,
    hint: str | None = None,
    placeholder: str | None = None,
    autocomplete: str | None = None,
) -> str:
    """A labelled input; `hint` is shown under it and tied to it for screen readers."""
    hint_id = f"{name}-hint" if hint else None
    control_attrs = attrs(
        id=name,
        name=name,
        type=type_,
        value=value or "",
        required=required,
        placeholder=placeholder,
        autocomplete=autocomplete,
        aria_describedby=hint_id,
    )
    control = f"<input{control_attrs}>"
    hint_html = f'<small id="{esc(hint_id)}">{esc(hint)}</small>' if hint and hint_id else ""
    return f'<label for="{esc(name)}">{esc(label)}</label>{control}{hint_html}'


def select(label: str, name: str, options: Iterable[tuple[str, str]], selected: str | None = None) -> str:
    """A labelled drop-down of (value, text) options."""
    rendered = "".join(
        f"<option{attrs(value=value, selected=value == selected)}>{esc(text)}</option>" for value, text in options
    )
    return f'<label for="{esc(name)}">{esc(label)}</label><select{attrs(id=name, name=name)}>{rendered}</select>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str = "Nothing yet.") -> str:
    """A table whose cells are HTML already (escape values with `esc` first); `empty` when there are no rows."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(title: str, body: str, *, id_: str | None = None) -> str:
    return f"<section{attrs(id=id_)}><h2>{esc(title)}</h2>{body}</section>"


LAYOUT = Template(
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title · SMS gateway</title>
<link rel="stylesheet" href="$css">
<script src="$js" defer></script>
</head>
<body>
<header class="top">
<span class="brand">SMS gateway</span>
$nav
</header>
<main>
<h1>$title</h1>
$messages
$body
</main>
</body>
</html>
"""
)


def layout(*, title: str, body: str, nav: str = "", messages: str = "", css: str, js: str) -> str:
    """A whole page: `body`, `nav` and `messages` are HTML already; `title` is text."""
    return LAYOUT.substitute(title=esc(title), body=body, nav=nav, messages=messages, css=esc(css), js=esc(js))
