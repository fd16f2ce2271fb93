"""``$(VAR)`` in a container's command and args, expanded as Kubernetes does
(k8s.io/kubernetes third_party/forked/golang/expansion): ``$(NAME)`` becomes the variable's value
when it is defined and stays as written when it is not, ``$$`` is one literal ``$`` (so
``$$(NAME)`` is the text ``$(NAME)``), and any other ``$`` is kept. No shell is involved."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def expand(text: str, env: Mapping[str, str]) -> str:
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            if following == "$":  # escaped operator
                out.append("$")
                cursor += 1
            elif following == "(":
                closer = text.find(")", cursor + 2)
                if closer == -1:  # incomplete reference: kept as written
                    out.append("$(")
                    cursor += 1
                else:
                    name = text[cursor + 2:closer]
                    out.append(env[name] if name in env else f"$({name})")
                    cursor = closer
            else:  # not a reference: the operator and the next character, unchanged
                out.append("$" + following)
                cursor += 1
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def expand_all(items: Sequence[str], env: Mapping[str, str]) -> list[str]:
    return [expand(item, env) for item in items]
