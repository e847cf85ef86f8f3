"""Chat templates: render a model's Jinja chat template the way transformers' `apply_chat_template` does.

Templates come from model files and are untrusted, so they run in Jinja's immutable sandbox. The environment
matches transformers' (trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, a `tojson`
that does not HTML-escape), so a template renders here exactly as it does there. Compiled templates are
immutable and cached; rendering is safe from any thread.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lite_srt.errors import TokenizerError


class _GenerationBlock(Extension):
    """Accept `{% generation %}...{% endgeneration %}` (transformers marks assistant spans with it); render the body.

    transformers uses the block to compute assistant-token masks for training, which serving never needs.
    """

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; prompts need the plain JSON text.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a template once; raises TokenizerError with Jinja's message on a syntax error."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(f"chat template has a syntax error at line {e.lineno}: {e.message}") from e


def render_chat_template(
    source: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    special_tokens: dict[str, str | None] | None = None,
    **kwargs: Any,
) -> str:
    """Render `messages` with the template `source`.

    `special_tokens` are exposed as variables (bos_token, eos_token, ...) like transformers does; `kwargs` are
    extra template variables (e.g. `enable_thinking`, `documents`). Template errors, including a template's own
    `raise_exception(...)`, become TokenizerError carrying the Jinja message.
    """
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise TokenizerError("chat messages must be a list of dicts with 'role' and 'content'")
    template = compile_chat_template(source)
    # transformers always defines `documents` (None when not given); some templates test it.
    variables = {"documents": None, **(special_tokens or {}), **kwargs}
    try:
        return template.render(
            messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **variables
        )
    except jinja2.TemplateError as e:
        raise TokenizerError(f"chat template failed to render: {e.message or e}") from e
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        # Templates index into messages freely; malformed messages surface as Python errors inside Jinja.
        raise TokenizerError(f"chat template failed to render: {type(e).__name__}: {e}") from e
