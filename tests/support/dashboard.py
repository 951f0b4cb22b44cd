"""Read the Grafana dashboard the way Grafana would: panels, targets, variables, PromQL ranges.

Grafana cannot run in the test environment, so the tests take its place: ``render`` interpolates
a target's expression like Grafana's Prometheus data source does (``All`` becomes the variable's
``allValue``, one or more values become an escaped regex), and ``scan`` finds the range
selectors and metric selectors of a PromQL expression for the lint rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GRAFANA_DIR = REPO / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "gpu-cluster.json"
IMPORT_COPY = GRAFANA_DIR / "gpu-cluster-import.json"

# Variables Grafana defines itself.
GLOBAL_VARIABLES = {
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__dashboard",
    "__org",
    "__user",
}
VARIABLE_REFERENCE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|\\]")

# Words that open a parenthesised list of label names, not an expression.
_LABEL_LIST_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_AGGREGATIONS = {
    "sum", "avg", "count", "min", "max", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values",
}  # fmt: skip
_KEYWORDS = _LABEL_LIST_WORDS | {"bool", "and", "or", "unless", "offset", "atan2"}


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, also those inside collapsed rows."""
    for item in dashboard["panels"]:
        yield item
        yield from item.get("panels", [])


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data (rows left out)."""
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def references(text: str) -> set[str]:
    """Names of the variables ``text`` refers to ($name, ${name}, ${name:fmt}, [[name]])."""
    return {next(g for g in match.groups() if g) for match in VARIABLE_REFERENCE.finditer(text)}


def regex_escape(value: str) -> str:
    """A value as Grafana writes it into a Prometheus regex matcher (escaped for the string)."""
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def render(
    text: str,
    dashboard: Mapping[str, Any],
    selection: Mapping[str, Sequence[str] | None],
    *,
    range_: str,
    rate_interval: str,
) -> str:
    """``text`` with variables replaced: ``selection[name]`` None means All, else the values."""
    defined = variables(dashboard)
    builtins = {"__rate_interval": rate_interval, "__range": range_, "__interval": "15s"}

    def value(name: str) -> str:
        if name in builtins:
            return builtins[name]
        if name not in selection:
            raise KeyError(f"no value chosen for variable {name!r}")
        chosen = selection[name]
        if chosen is None:
            return str(defined[name].get("allValue") or ".*")
        escaped = [regex_escape(item) for item in chosen]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    return VARIABLE_REFERENCE.sub(lambda m: value(next(g for g in m.groups() if g)), text)


@dataclass
class Scan:
    """What ``scan`` found in one PromQL expression."""

    # (innermost enclosing function, text between the brackets)
    ranges: list[tuple[str, str]] = field(default_factory=list)
    # [metric name, innermost enclosing function, followed by a range]
    selectors: list[list[Any]] = field(default_factory=list)


def _skip_string(expr: str, start: int) -> int:
    quote = expr[start]
    index = start + 1
    while index < len(expr) and expr[index] != quote:
        index += 2 if expr[index] == "\\" else 1
    return index + 1


def scan(expr: str) -> Scan:
    """Range and metric selectors of ``expr``, with the function each sits in.

    A small tokenizer, enough for lint rules: it skips strings, tells function names (a word
    before ``(``), label lists (after by/on/...), label matchers (inside braces) and metric names
    apart, and records what the brackets of each range selector hold.
    """
    result = Scan()
    stack: list[str] = []
    braces = 0
    word_before: str | None = None
    pending: int | None = None  # the last selector, until we know whether a range follows
    index = 0
    while index < len(expr):
        char = expr[index]
        if char in "\"'`":
            index = _skip_string(expr, index)
            continue
        if char.isalpha() or char in "_:":
            end = index
            while end < len(expr) and (expr[end].isalnum() or expr[end] in "_:"):
                end += 1
            word = expr[index:end]
            rest = expr[end:].lstrip()
            if braces or (stack and stack[-1] in _LABEL_LIST_WORDS):
                pass  # a label name
            elif rest.startswith("(") or word in _AGGREGATIONS or word in _KEYWORDS:
                word_before = word
            else:
                result.selectors.append([word, stack[-1] if stack else "", False])
                pending = len(result.selectors) - 1
            index = end
            continue
        if char.isdigit() or (char == "." and expr[index + 1 : index + 2].isdigit()):
            while index < len(expr) and (expr[index].isalnum() or expr[index] == "."):
                index += 1
            pending = None
            continue
        if char == "{":
            braces += 1
        elif char == "}":
            braces -= 1
        elif char == "(":
            stack.append(word_before or "")
            word_before = None
            pending = None
        elif char == ")":
            if stack:
                stack.pop()
            pending = None
        elif char == "[":
            end = expr.index("]", index)
            result.ranges.append((stack[-1] if stack else "", expr[index + 1 : end]))
            if pending is not None:
                result.selectors[pending][2] = True
            pending = None
            index = end + 1
            continue
        elif not char.isspace() and not braces:
            pending = None
        index += 1
    return result
