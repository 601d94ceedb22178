"""One error path for every command-line entry point.

A *user error* (a bad config value, a missing or corrupt file, artifacts that do not belong together) ends with one
line on stderr, ``error: <where>: <problem>``, and exit status 2; nothing half-written stays behind. A real bug
keeps its traceback. Every CLI (``data_builders.build``, ``tokenization.build``, ``sft/train.py``, ``eval.run``,
``rl/*``) goes through :func:`run_cli` and raises :class:`UserError` (or a subclass, e.g.
``data_builders.dataset.DataError``) for anything the user can fix:

    def main(argv=None) -> int:
        return run_cli(_main, argv)

    def _main(argv):
        (args,) = parse_config((MyArgs,), argv)       # strict YAML/flags, field types checked
        check(args.batch_size >= 1, "batch_size", f"must be >= 1, got {args.batch_size}")
        ...

Helpers here validate up front (ranges, choices, files that exist and parse) so that a run fails before it fits or
writes anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A problem the user can fix. The message names where (file / line / config key) and what is wrong."""


def user_error(where: str | os.PathLike | None, problem: str) -> UserError:
    return UserError(f"{where}: {problem}" if where not in (None, "") else problem)


def check(ok: Any, where: str, problem: str) -> None:
    """Raise ``UserError("<where>: <problem>")`` unless ``ok``."""
    if not ok:
        raise user_error(where, problem)


# Exceptions that mean "the user's input is wrong" wherever they come from. OS errors carry the path in their text.
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def format_os_error(e: OSError) -> str:
    reason = e.strerror or type(e).__name__
    return f"{e.filename}: {reason}" if e.filename else str(e)


def run_cli(fn: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *, prog: str = "") -> int:
    """Call ``fn(argv)``; turn user errors into one ``error: ...`` line and exit status 2.

    Returns 0 on success (what ``fn`` returned is discarded: print inside ``fn``). ``SystemExit`` from argparse
    (``--help``, a malformed flag: exit 2 with argparse's own one-line message) passes through.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        fn(argv)
    except UserError as e:
        return _fail(str(e), prog)
    except USER_OS_ERRORS as e:
        return _fail(format_os_error(e), prog)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _fail(message: str, prog: str) -> int:
    line = " ".join(message.split("\n")[0].split()) if "\n" in message else message
    print(f"error: {prog + ': ' if prog else ''}{line}", file=sys.stderr)
    return EXIT_USER_ERROR


# --------------------------------------------------------------------------------------------------- config parsing


def parse_config(dataclass_types: tuple, argv: Sequence[str]) -> tuple:
    """``TrlParser(...).parse_args_and_config`` with user errors for everything a config file can get wrong.

    Checks: the config file exists and is a YAML mapping, no unknown keys, and every field's value has the declared
    type (YAML ``batch_size: [1]`` or ``lr: "fast"`` is refused, naming the key and the file).
    """
    import yaml
    from trl import TrlParser

    argv = list(argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        check(i + 1 < len(argv), "--config", "needs a YAML file path")
        config_path = argv[i + 1]
        p = Path(config_path)
        check(p.is_file(), config_path, "config file not found" if not p.exists() else "not a file")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise user_error(config_path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{config_path}, line {mark.line + 1}" if mark is not None else config_path
            raise user_error(where, f"invalid YAML: {getattr(e, 'problem', None) or e}") from None
        check(isinstance(loaded, dict), config_path, "must contain a YAML mapping of config keys")
    where = config_path or "command line"
    parser = TrlParser(dataclass_types)
    config_keys = set(loaded) if config_path else set()

    def error(message: str) -> None:  # argparse's own errors (bad type of a flag or config value): one line
        m = re.search(r"argument --([\w-]+)", message)
        key = m.group(1) if m else None
        src = config_path if key in config_keys and f"--{key}" not in argv else "command line"
        raise user_error(src, message)

    parser.error = error
    try:
        parsed = parser.parse_args_and_config(argv)
    except UserError:
        raise
    except ValueError as e:
        msg = str(e)
        m = re.search(r"Unknown arguments from config file: (\[.*?\])", msg)
        if m:
            import difflib

            known = sorted({f.name for t in dataclass_types for f in fields(t)})
            bad = [k[2:] for k in re.findall(r"'(--[^']+)'", m.group(1))] or [m.group(1)]
            hints = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, known, 1)) else k
                     for k in bad]
            raise user_error(where, f"unknown config key(s): {', '.join(hints)}; `--help` lists the valid "
                                    "keys") from None
        raise user_error(where, msg) from None
    for obj in parsed:
        check_field_types(obj, where)
    return parsed


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (list, tuple, Sequence, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        return not args or all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # a type we do not model (e.g. an enum from a library): the library checks it


def _type_name(tp: Any) -> str:
    """``int`` -> "int", ``list[str]`` -> "list[str]" (not "list": a generic alias forwards ``__name__``)."""
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _list_arms(tp: Any) -> list[Any]:
    """The ``list[X]`` / ``Sequence[X]`` parts of a field type (itself, or members of a union)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [arm for a in typing.get_args(tp) for arm in _list_arms(a)]
    return [tp] if typing.get_origin(tp) in (list, tuple, Sequence, typing.Sequence) else []


def _describe_given(value: Any, tp: Any) -> str:
    """What was given, said so that the mismatch is visible: ``[1, 2] (item 0, 1, is int, not str)``."""
    arms = _list_arms(tp)
    if arms and isinstance(value, (list, tuple)):
        for arm in arms:
            (item_type, *_) = typing.get_args(arm) or (Any,)
            for i, item in enumerate(value):
                if not _type_ok(item, item_type):
                    return (f"{value!r} (item {i}, {item!r}, is {type(item).__name__}, "
                            f"not {_type_name(item_type)})")
    if arms and isinstance(value, str):
        return f"{value!r} (a str, not a list: write [{value}] in YAML)"
    return f"{value!r} ({'null' if value is None else type(value).__name__})"


LIBRARY_MODULES = {"transformers", "trl", "peft", "accelerate", "datasets"}


def check_field_types(obj: Any, where: str = "config") -> None:
    """Refuse a dataclass field whose value is not of its declared type (only for our own annotated fields)."""
    if not is_dataclass(obj) or type(obj).__module__.split(".")[0] in LIBRARY_MODULES:
        return  # library configs (TRL's SFTConfig, ...) convert their own fields after parsing and check them
    try:
        hints = typing.get_type_hints(type(obj))
    except Exception:  # a library dataclass whose annotations do not resolve here: nothing to check
        return
    for f in fields(obj):
        if f.name not in hints:
            continue
        value = getattr(obj, f.name)
        if not _type_ok(value, hints[f.name]):
            raise user_error(where, f"`{f.name}` must be {_type_name(hints[f.name])}, got "
                                    f"{_describe_given(value, hints[f.name])}")


# --------------------------------------------------------------------------------------------------- value checks


def check_range(name: str, value: float | int | None, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False, allow_none: bool = False, where: str = "") -> None:
    """``name`` within [lo, hi] (open ends with ``lo_open``/``hi_open``); the message shows the range."""
    label = f"{where}: `{name}`" if where else f"`{name}`"
    if value is None:
        check(allow_none, label, "must be set")
        return
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise UserError(f"{label} must be in {rng}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any], where: str = "") -> None:
    choices = tuple(choices)
    label = f"{where}: `{name}`" if where else f"`{name}`"
    check(value in choices, label, f"{value!r} is not one of {', '.join(map(repr, choices))}")


def check_seed(name: str, value: int, where: str = "") -> None:
    """numpy / faiss / torch seeds are 32-bit unsigned."""
    check_range(name, value, 0, 2**32 - 1, where=where)


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` exists and is a file; the message says what it should have been (``what``)."""
    p = Path(path)
    check(p.exists(), str(p), f"{what} not found")
    check(p.is_file(), str(p), f"{what} must be a file, found a directory")
    return p


def require_dir(path: str | os.PathLike, what: str, *, containing: str | None = None) -> Path:
    p = Path(path)
    check(p.exists(), str(p), f"{what} not found")
    check(p.is_dir(), str(p), f"{what} must be a directory, found a file")
    if containing:
        check((p / containing).is_file(), str(p), f"not a {what}: no {containing} inside")
    return p


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file; missing, non-UTF-8 or malformed JSON is a user error naming the file (and line)."""
    p = require_file(path, what)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise user_error(p, f"{what} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise user_error(f"{p}, line {e.lineno}", f"{what} is not valid JSON ({e.msg})") from None


def load_npy(path: str | os.PathLike, what: str, **kwargs) -> Any:
    """``numpy.load`` with a user error naming the file for a missing, truncated or non-.npy file."""
    import numpy as np

    p = require_file(path, what)
    try:
        return np.load(p, **kwargs)
    except (ValueError, EOFError, OSError) as e:
        raise user_error(p, f"{what} is truncated or not a .npy file ({e})") from None


# --------------------------------------------------------------------------------------------------- output paths

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(final: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` beside ``final`` left by processes that no longer run."""
    final = Path(final)
    removed = []
    if not final.parent.is_dir():
        return removed
    for p in final.parent.iterdir():
        m = _TEMP_RE.match(p.name)
        if m and m.group("name") == final.name and not _pid_alive(int(m.group("pid"))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """An output directory may exist (it is replaced atomically) but must not be a file; stale temps are removed."""
    p = Path(path)
    check(not (p.exists() and not p.is_dir()), str(p), f"{what} is an existing file; refusing to replace it")
    for parent in p.parents:
        if parent.exists():
            check(parent.is_dir(), str(parent), f"{what}'s parent is a file, not a directory")
            check(os.access(parent, os.W_OK), str(parent), "not writable")
            break
    clean_stale_temps(p)
    return p
