"""The CLI is generated from the jobs' config dataclasses: every default lives in one place."""

from __future__ import annotations

import dataclasses

import pytest

from analysis.__main__ import build_parser
from analysis.jobs.options import from_args

COMMANDS = {  # command: (module, config class, its required fields)
    "harvest": ("analysis.jobs.harvest", "HarvestJob", {}),
    "explain": ("analysis.jobs.explain", "ExplainJob", {"layer": 1, "neurons": "0"}),
    "score": ("analysis.jobs.score", "ScoreJob", {"layer": 1, "neurons": "0"}),
    "n2g": ("analysis.jobs.n2g", "N2GJob", {"layer": 1}),
    "topics": ("analysis.jobs.topics", "TopicsJob", {"layer": 1}),
    "export": ("analysis.jobs.export", "ExportJob", {"layer": 1, "neuron": 0}),
    "compare-units": ("analysis.jobs.compare", "CompareJob", {"layer": 1, "sae": "some/folder"}),
}


def _subparser(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("command", COMMANDS)
def test_parser_defaults_are_the_config_defaults(command):
    """With only the required options, the parsed config equals the dataclass built from its own defaults
    (nested science configs included), so no default is repeated in the parser."""
    import importlib

    module, cls_name, required = COMMANDS[command]
    cls = getattr(importlib.import_module(module), cls_name)
    args = build_parser().parse_args([command, *[x for k, v in required.items() for x in (f"--{k}", str(v))]])
    given = {"neurons": "0"} if command == "score" else {}  # score takes --neuron N or --neurons SPEC
    parsed = from_args(cls, args, **given)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert parsed == cls(**required), command
    # every option the parser generated from the dataclass shows the dataclass's default in its help
    for action in _subparser(command)._actions:
        if action.dest.split(".")[0] in fields and action.default not in (None, False, True, ()) and not action.required:
            shown = ",".join(action.default) if isinstance(action.default, tuple) else str(action.default)
            assert f"(default: {shown})" in action.help, (command, action.dest)


ALL_CONFIGS = {**{c: (m, k) for c, (m, k, _r) in COMMANDS.items()},
               "build": ("analysis.jobs.build.plan", "BuildJob"), "embed": ("analysis.jobs.embed", "EmbedJob"),
               "ablate": ("analysis.jobs.causal", "AblateJob"), "steer": ("analysis.jobs.causal", "SteerJob"),
               "effects": ("analysis.jobs.causal", "EffectsJob"), "attribute": ("analysis.jobs.attribute", "AttributeJob")}


def _docstring(cls, name: str) -> str | None:
    """The string literal under field ``name`` in the source of ``cls`` or a base (read here independently)."""
    import ast
    import inspect
    import textwrap

    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for i, stmt in enumerate(body[:-1]):
            if isinstance(stmt, ast.AnnAssign) and stmt.target.id == name and isinstance(body[i + 1], ast.Expr):
                return " ".join(body[i + 1].value.value.split()).replace("``", "")
    return None


@pytest.mark.parametrize("command", ALL_CONFIGS)
def test_every_option_help_is_its_field_docstring(command):
    """One source for options: the help of every option generated from a config field is that field's docstring
    (followed by the default or a note on repeating it), nested configs included."""
    import importlib
    import typing

    module, cls_name = ALL_CONFIGS[command]
    cls = getattr(importlib.import_module(module), cls_name)
    checked = 0
    for action in _subparser(command)._actions:
        names = action.dest.split(".")
        klass = cls
        for name in names[:-1]:  # a nested config: its field's class
            klass = typing.get_type_hints(klass).get(name)
        if klass is None or names[-1] not in {f.name for f in dataclasses.fields(klass)}:
            continue  # an option that is no config field (--db, --json, ...)
        doc = _docstring(klass, names[-1])
        assert doc, (command, action.dest, "has no docstring")
        help = action.help.replace("%%", "%")
        assert help == doc or help.startswith(doc + " ("), (command, action.dest, help, doc)
        checked += 1
    assert checked >= (1 if command == "embed" else 3), command


def test_an_option_help_reads_as_its_docstring():
    """The same, spelt out for one field: N2GJob.chunk's docstring is its --chunk help."""
    action = next(a for a in _subparser("n2g")._actions if a.dest == "chunk")
    assert action.help == "Units fitted together and stored together (an interrupt loses at most one chunk). (default: 32)"


def test_nested_options_reach_the_science_configs():
    from analysis.jobs.n2g import N2GJob
    from analysis.jobs.topics import TopicsJob

    args = build_parser().parse_args(["topics", "--layer", "2", "--k", "7", "--tau", "50", "--corpus", "a.txt, b.txt",
                                      "--min-count", "3"])
    job = from_args(TopicsJob, args)
    assert (job.topic.k, job.topic.tau, job.npmi.corpora, job.npmi.min_count) == (7, 50, ("a.txt", "b.txt"), 3)
    assert job.topic.theta_l == TopicsJob(layer=0).topic.theta_l  # untouched fields keep their own defaults
    job = from_args(N2GJob, build_parser().parse_args(["n2g", "--layer", "0", "--no-augment", "--chunk", "4"]))
    assert job.config.augment is False and job.chunk == 4 and job.config.max_context == N2GJob(layer=0).config.max_context


def test_a_config_that_refuses_its_values_is_a_user_error():
    from analysis.jobs.topics import TopicsJob
    from analysis.types import UserError

    with pytest.raises(UserError, match="k must be at least 2"):
        from_args(TopicsJob, build_parser().parse_args(["topics", "--layer", "0", "--k", "1"]))
