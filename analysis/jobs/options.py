"""Command-line options generated from config dataclasses: every default lives in its dataclass and every
option's help is its field's docstring (``field_docs``), so each is written once.

``Opt`` says how one field is offered (flag name, choices, required); ``offer`` names the fields a command offers;
``add_options`` adds them (recursing into fields that are themselves configs), ``from_args`` builds the dataclass
back from the parsed namespace. A bool field defaulting to False becomes ``--flag``; one defaulting
to True becomes ``--no-flag``; a ``tuple[str, ...]`` field takes a comma-separated list (or, with
``Opt(repeat=True)``, one value per repeated option).
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import textwrap
import dataclasses
import typing
from dataclasses import MISSING, dataclass

from analysis.types import UserError


@dataclass(frozen=True)
class Opt:
    flag: str | None = None
    """The option's name (default: ``--`` + the field name with dashes)."""
    choices: tuple[str, ...] | None = None
    required: bool = False
    repeat: bool = False
    """A ``tuple[str, ...]`` field given by repeating the option (for values that may hold commas)."""


def offer(names: str = "", **special: "Opt | dict") -> dict[str, "Opt | dict"]:
    """The fields a command offers: ``names`` (space-separated) as plain options, plus fields with an ``Opt`` of their
    own or, for a field that is itself a config, a nested ``offer``."""
    return {**{n: Opt() for n in names.split()}, **special}


def option_help(cls: type, name: str) -> str:
    """A field's option help: its docstring, as plain text."""
    doc = field_docs(cls).get(name)
    if doc is None:
        raise TypeError(f"{cls.__name__}.{name} is offered as an option but has no docstring (its help)")
    return doc.replace("``", "").replace("%", "%%")  # argparse formats help with %


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _scalar(hint) -> type:
    """int, float or str from a field's type hint (``int | None`` -> int)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def add_options(parser: argparse.ArgumentParser, cls: type, opts: dict[str, Opt | dict], prefix: str = "") -> None:
    """Add the fields of dataclass ``cls`` named in ``opts``; a field that is a dataclass takes a nested dict."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        opt = opts.get(f.name)
        if opt is None:
            continue
        dest = prefix + f.name
        if isinstance(opt, dict):
            add_options(parser, hints[f.name], opt, prefix=dest + ".")
            continue
        default, hint, help = _default(f), hints[f.name], option_help(cls, f.name)
        flag = opt.flag or "--" + f.name.replace("_", "-")
        if hint is bool:
            if default:
                flag = opt.flag or "--no-" + f.name.replace("_", "-")
            parser.add_argument(flag, dest=dest, action="store_false" if default else "store_true", help=help)
            continue
        if opt.repeat:
            parser.add_argument(flag, dest=dest, metavar=f.name.upper(), action="append", default=None,
                                help=help + " (repeat for several)")
            continue
        kind = _comma_list if typing.get_origin(hint) is tuple else _scalar(hint)
        shown = ",".join(default) if isinstance(default, tuple) else default
        text = help + ("" if opt.required or default in (None, ()) else f" (default: {shown})")
        parser.add_argument(flag, dest=dest, metavar=None if opt.choices else f.name.upper(), type=kind,
                            default=None if opt.required else default, choices=opt.choices, required=opt.required,
                            help=text)


def from_args(cls: type, args: argparse.Namespace, prefix: str = "", **given):
    """An instance of ``cls`` from the options ``add_options`` added (other fields keep their defaults or take
    ``given``)."""
    hints = typing.get_type_hints(cls)
    values = dict(given)
    ns = vars(args)
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        dest = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]) and any(k.startswith(dest + ".") for k in ns):
            values[f.name] = from_args(hints[f.name], args, prefix=dest + ".")
        elif dest in ns:
            values[f.name] = tuple(ns[dest] or ()) if isinstance(ns[dest], list) or (
                ns[dest] is None and typing.get_origin(hints[f.name]) is tuple) else ns[dest]
    try:
        return cls(**values)
    except ValueError as exc:  # a config that checks itself (e.g. TopicConfig's k and tau)
        raise UserError(str(exc)) from None


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), whitespace folded, through the
    class's bases: the one text a field's option help is made of."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs
