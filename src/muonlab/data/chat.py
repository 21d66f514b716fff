"""The chat template of supervised fine-tuning: conversations as text, and which characters are trained.

A conversation is a list of messages ``{"role": ROLE, "content": TEXT}`` with ROLE one of
:data:`ROLES`. Each message becomes ``<|ROLE|>`` + newline + TEXT + ``<|end|>`` + newline, in order::

    <|system|>
    You write Python.<|end|>
    <|user|>
    def add(a, b):
        'Return a + b.'<|end|>
    <|assistant|>
        return a + b<|end|>

The markers are plain text (a pretrained vocabulary has no ids for them): every tokenizer encodes
them as ordinary characters. The *trained* characters are those of each assistant message's TEXT
and the ``<|end|>`` + newline that closes it, so a fine-tuned model learns to answer and to end its
turn; the role markers and the system and user messages are context only. A prompt for generation
is the conversation so far followed by :data:`GENERATION_PROMPT`, and the answer ends at ``<|end|>``.

:data:`CHAT_TEMPLATE` is the same template in Jinja, as Hugging Face tokenizers hold it
(``tokenizer_config.json``'s ``chat_template``): ``apply_chat_template`` renders exactly
:func:`render_chat`'s text, and its ``{% generation %}`` blocks mark exactly the trained characters,
so ``return_assistant_tokens_mask=True`` gives the tokens muonlab trains on.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import DataError

__all__ = ["CHAT_TEMPLATE", "END_MARKER", "GENERATION_PROMPT", "ROLES", "check_messages", "render_chat"]

ROLES = ("system", "user", "assistant")
END_MARKER = "<|end|>"
GENERATION_PROMPT = "<|assistant|>\n"

CHAT_TEMPLATE = (
    r"{% for message in messages %}"
    r"{{ '<|' + message['role'] + '|>\n' }}"
    r"{% if message['role'] == 'assistant' %}"
    r"{% generation %}{{ message['content'] + '<|end|>\n' }}{% endgeneration %}"
    r"{% else %}{{ message['content'] + '<|end|>\n' }}{% endif %}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
""":func:`render_chat` as a Jinja chat template, with the trained text in ``{% generation %}`` blocks."""


def render_chat(messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The text of a conversation and its trained character spans ``[start, end)`` (see the module docstring).

    ``messages`` must have passed :func:`check_messages`.
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    for message in messages:
        header = f"<|{message['role']}|>\n"
        body = message["content"] + END_MARKER + "\n"
        parts += [header, body]
        length += len(header)
        if message["role"] == "assistant":
            spans.append((length, length + len(body)))
        length += len(body)
    return "".join(parts), spans


def check_messages(messages: object, where: str) -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role", "content"}`` dicts, or ``DataError`` naming ``where`` and the problem.

    A conversation needs at least one assistant message (its response), and every assistant
    message needs text: without one there is nothing to fine-tune on.
    """
    form = f'a list of {{"role": ..., "content": ...}} objects with role one of {", ".join(ROLES)}'
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where} has "messages" that is not a non-empty list; it must be {form}')
    checked = []
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)):
            raise DataError(f"{where} has message {i} {_short(message)}, which is not valid; each message must be "
                            f'{{"role": ..., "content": "..."}} with role one of {", ".join(ROLES)}')
        if message["role"] == "assistant" and not message["content"].strip():
            raise DataError(f"{where} has an empty response (assistant message {i}); every response needs text")
        checked.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "assistant" for m in checked):
        raise DataError(f'{where} has no response: its messages have no "assistant" message to train on')
    return checked


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
