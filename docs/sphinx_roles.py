"""Griffe extension for the API reference: the docstrings' Sphinx roles (:func:`x`) become links.

The docstrings cross-reference in Sphinx's reST roles, which mkdocstrings would print as they are. Each
role becomes an optional mkdocs-autorefs reference: a link where the target is documented in the site,
plain code where it is not (a private helper, torch). A short target is looked up where Sphinx would
look: a method in the enclosing class, anything else in the enclosing module.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([\w.]+)`")
_ABSOLUTE = ("lightning_synflow", "torch", "lightning", "numpy", "matplotlib", "transformers")


def _identifier(target: str, obj: griffe.Object, role: str) -> str:
    if target.split(".")[0] in _ABSOLUTE:
        return target
    if role == "meth":
        owner = obj if obj.is_class else obj.parent
        if owner is not None and owner.is_class:
            return f"{owner.path}.{target}"
    return f"{obj.module.path}.{target}"


def _link(match: re.Match[str], obj: griffe.Object) -> str:
    role = match.group(0)[1 : match.group(0).index(":", 1)]
    short, target = match.group(1), match.group(2)
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{_identifier(target, obj, role)}" optional><code>{title}</code></autoref>'


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = _ROLE.sub(lambda m: _link(m, obj), obj.docstring.value)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring as the object is loaded (listed after griffe_sphinx, whose
    attribute docstrings come from `#:` comments in the attribute hook)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        _rewrite(obj)

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        _rewrite(attr)
