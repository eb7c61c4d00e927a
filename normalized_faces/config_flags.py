"""absl flags derived from config dataclasses, so a config field is a flag without a second list.

A field declared with `option(default, help, choices=...)` becomes `--<name>` (or the name given
by `flag=`), typed by its default (bool, int, float, str, tuple of ints -> comma list) or by
`kind=` when the default is None. Nested dataclass fields (TrainConfig's model / trainer /
runtime parts, PrepConfig's filter thresholds) are walked, so their fields are flags at the top
level: names must therefore be unique across a config, which `define_flags` checks.

    define_flags(TrainConfig())                 # at import time of the entry point
    TrainConfig().replace(**overrides_from_flags(TrainConfig()))   # in main: the flags set
"""

from __future__ import annotations

import dataclasses

from absl import flags

_HELP, _CHOICES, _KIND, _FLAG = "help", "choices", "kind", "flag"


def option(default=None, help: str = "", *, choices=None, kind=None, flag: str | None = None):
    """A dataclass field that carries its flag's help text, allowed values and type.

    Args:
      default: the default value (also the flag's).
      help: one or two sentences for --help: what it does, its unit, the paper's value.
      choices: allowed values (an enum flag; `check_choices` enforces them on the config too).
      kind: the value type when `default` is None (int, float, str).
      flag: the flag's name when it differs from the field's.
    """
    metadata = {_HELP: help, _CHOICES: tuple(choices) if choices else None, _KIND: kind, _FLAG: flag}
    return dataclasses.field(default=default, metadata=metadata)


def leaf_fields(config) -> list:
    """[(field, value)] of a config dataclass instance, nested dataclasses walked in order."""
    leaves = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            leaves.extend(leaf_fields(value))
        else:
            leaves.append((field, value))
    return leaves


def flag_name(field) -> str:
    return field.metadata.get(_FLAG) or field.name


def define_flags(config, flag_values=flags.FLAGS, module_name: str | None = None) -> list:
    """Defines a flag per leaf field of `config` (an instance: its values are the defaults).

    Returns the flag names. Raises ValueError on a name used twice or a field without help.
    """
    names = []
    for field, default in leaf_fields(config):
        name = flag_name(field)
        if name in names:
            raise ValueError(f"flag --{name} would be defined twice by {type(config).__name__}")
        help_text = field.metadata.get(_HELP)
        if not help_text:
            raise ValueError(
                f"{type(config).__name__}.{field.name} has no help text: declare it with config_flags.option(..., help=...)"
            )
        choices = field.metadata.get(_CHOICES)
        kind = field.metadata.get(_KIND) or type(default)
        options = dict(flag_values=flag_values, module_name=module_name)
        if choices:
            flags.DEFINE_enum(name, default, list(choices), help_text, **options)
        elif kind is bool:
            flags.DEFINE_bool(name, default, help_text, **options)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text, **options)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text, **options)
        elif kind is str:
            flags.DEFINE_string(name, default, help_text, **options)
        elif kind is tuple:
            flags.DEFINE_list(name, [str(v) for v in default], help_text + " (comma-separated integers)", **options)
        else:
            raise TypeError(
                f"{type(config).__name__}.{field.name}: no flag type for {kind.__name__}; give option(kind=...)"
            )
        names.append(name)
    return names


def _parse(field, default, value):
    if (field.metadata.get(_KIND) or type(default)) is tuple:
        return tuple(int(v) for v in value)
    return value


def overrides_from_flags(config, flag_values=flags.FLAGS, explicit_only: bool = True) -> dict:
    """{field name: value} of the flags given on the command line (all flags if not explicit_only)."""
    values = {}
    for field, default in leaf_fields(config):
        flag = flag_values[flag_name(field)]
        if flag.present or not explicit_only:
            values[field.name] = _parse(field, default, flag.value)
    return values


def check_choices(config) -> None:
    """Raises ValueError naming the field when a value is not one of its declared choices."""
    for field, value in leaf_fields(config):
        choices = field.metadata.get(_CHOICES)
        if choices and value not in choices:
            raise ValueError(f"{field.name} must be one of {choices}, got {value!r}")


def replace_nested(config, **values):
    """A copy of `config` with leaf fields replaced by name, wherever they are nested.

    Raises TypeError naming any name that is not a field of the config.
    """
    values = dict(values)
    changes = {}
    for field in dataclasses.fields(config):
        current = getattr(config, field.name)
        if field.name in values:
            changes[field.name] = values.pop(field.name)
        elif dataclasses.is_dataclass(current):
            mine = {f.name for f, _ in leaf_fields(current)}
            part = {k: values.pop(k) for k in list(values) if k in mine}
            if part:
                changes[field.name] = replace_nested(current, **part)
    if values:
        known = sorted(f.name for f, _ in leaf_fields(config))
        raise TypeError(f"{type(config).__name__} has no field {', '.join(sorted(values))}; fields: {', '.join(known)}")
    return dataclasses.replace(config, **changes)


def run_console_script(module_name: str, define_flags, main) -> None:
    """A console script's entry point: defines its flags, makes --help show them, runs main."""
    define_flags()
    help_for_console_script(module_name)
    run_command(main)


# Errors about what the user gave (a path, a folder, a damaged file, a bad value): one line on
# stderr and exit code 2, not a traceback. NORMALIZED_FACES_TRACEBACK=1 shows the traceback too.
INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError)


def run_command(main, **run_options) -> None:
    """absl's app.run(main) for the project's commands: TensorFlow imported without its start-up
    noise (quiet_start), and an input problem (INPUT_ERRORS, and the job's own RuntimeErrors that
    say what was lost) printed as one line with exit code 2."""
    import os
    import sys

    from absl import app

    from normalized_faces.quiet_start import import_tensorflow

    import_tensorflow()

    def guarded(argv):
        try:
            return main(argv)
        except INPUT_ERRORS + _job_errors() as error:
            if os.environ.get("NORMALIZED_FACES_TRACEBACK"):
                raise
            message = " ".join(str(error).split()) or type(error).__name__
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(2)

    app.run(guarded, **run_options)


def _job_errors() -> tuple:
    """Data prep's own failures (books that do not balance, every photo lost to a bug), if loaded."""
    import sys

    job = sys.modules.get("data_prep.job")
    return (job.LostRecords, job.InternalErrors) if job else ()


def help_for_console_script(module_name: str) -> None:
    """Makes `--help` of a console script (whose __main__ is pip's wrapper) show the usage text and
    flags of the module that implements it: absl lists the key flags of sys.argv[0]."""
    import sys

    from absl import flags

    module = sys.modules[module_name]
    sys.modules["__main__"].__doc__ = module.__doc__
    for flag in flags.FLAGS.get_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
