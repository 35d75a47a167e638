"""Cluster configuration: a YAML file, rendered through Jinja2, validated with pydantic.

The file holds named cluster templates that may ``extends:`` one another (StarCluster's
EXTENDS) and a ``default:`` template. Loading goes text -> Jinja2 -> YAML -> merged template
-> CLI overrides -> :class:`ClusterConfig`. Every problem surfaces as one :class:`ConfigError`
whose ``str()`` is a single line naming the file, the dotted field and what is wrong, so the
CLI can print it and stop before anything is created in the cloud.

Line numbers in Jinja2 errors refer to the file as written; in YAML errors they refer to
the rendered text, which keeps the same lines unless a Jinja2 expression spans several.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import platformdirs
import pydantic
import yaml

from provision.assets import templates_dir
from provision.errors import BadInput
from provision.schema import SIM_REGION, ClusterConfig

__all__ = ["SIM_REGION", "ClusterConfig", "ConfigError", "default_config_path", "load_config",
           "templates_dir", "write_starter"]

TOP_LEVEL_KEYS = ("default", "clusters")


class ConfigError(BadInput):
    """A bad cluster file or flag, told in one line.

    ``str(err)`` is what the CLI prints, e.g.
    ``"cluster.yaml: clusters.small.spot_bid: must be a positive number (got -1)"``.
    """


FIELDS = tuple(ClusterConfig.model_fields)
TEMPLATE_KEYS = ("extends", *FIELDS)


def default_config_path() -> Path:
    """Where ``provision init`` writes and every command looks without ``--config``."""
    return Path(platformdirs.user_config_dir("provision")) / "cluster.yaml"


def write_starter(path: Path | None = None, force: bool = False) -> Path:
    """Copy the commented starter file verbatim (it stays a Jinja2 template) with mode 0600.

    Refuses to clobber an existing file unless ``force``, since it may hold the user's edits.
    """
    path = Path(path) if path is not None else default_config_path()
    if path.exists() and not force:
        raise ConfigError(f"{_show(path)} exists; use --force to overwrite")
    text = (templates_dir() / "cluster.yaml").read_bytes()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
        path.chmod(0o600)  # O_CREAT's mode does not apply to a file that already existed
    except OSError as exc:
        raise ConfigError(f"{_show(path)}: cannot write: {exc.strerror}") from None
    return path


def load_config(
    path: Path | None = None,
    template: str | None = None,
    overrides: dict[str, object] | None = None,
) -> ClusterConfig:
    """Load, render, resolve and validate one cluster template, then apply CLI overrides.

    ``path`` None means the default location; if nothing is there, the built-in defaults
    (the simulated region) are used so ``provision up`` works with zero setup. An explicit
    path must exist. ``template`` None picks the file's ``default:`` (or its only template).
    ``overrides`` are CLI flags keyed by field name; ``None`` values mean "flag not given".

    A key path set explicitly (file or flag) must exist, be private
    (no group/other permission bits) and have its ``.pub`` next to it. The default key path
    is not checked: when it is missing the orchestrator generates it.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in overrides:
        if key not in FIELDS:
            hint = _did_you_mean(_flag(key), [_flag(f) for f in FIELDS])
            raise ConfigError(f"{_flag(key)}: unknown option{hint}")

    explicit = path is not None
    path = Path(path) if explicit else default_config_path()
    if path.exists():
        source, merged = _show(path), _resolve(path, template)
    elif explicit:
        raise ConfigError(f"{_show(path)}: config file not found")
    elif template is not None:
        raise ConfigError(
            f"--template: no config file at {_show(path)} to take {template!r} from; "
            "run `provision init` or pass --config"
        )
    else:
        source, merged = _show(path), ("", {})

    chosen, values = merged
    data = {**values, **overrides}
    try:
        cfg = ClusterConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        where = _where(source, chosen, field, overrides)
        rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"][1:])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{where}{rest}: {_describe(err)}{more}") from None

    if "key_path" in cfg.model_fields_set:
        _check_key(cfg, _where(source, chosen, "key_path", overrides))
    return cfg


def _resolve(path: Path, template: str | None) -> tuple[str, dict[str, Any]]:
    """Render and parse ``path``, then flatten the chosen template's ``extends`` chain.

    Returns the template name and its merged settings (parent first, child wins).
    """
    src = _show(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{src}: cannot read: {getattr(exc, 'strerror', exc)}") from None
    doc = _parse(src, _render(src, text))

    clusters = doc.get("clusters") or {}
    if not isinstance(clusters, dict):
        raise ConfigError(f"{src}: clusters: must be a mapping of template names to settings")
    for name, body in clusters.items():
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"{src}: clusters.{name}: must be a mapping of settings")
        for key in body or {}:
            if key not in TEMPLATE_KEYS:
                hint = _did_you_mean(str(key), TEMPLATE_KEYS)
                raise ConfigError(f"{src}: clusters.{name}.{key}: unknown key{hint}")
    names = [str(n) for n in clusters]

    if template is not None:
        if template not in clusters:
            raise ConfigError(f"--template: {_unknown_template(template, names, f' in {src}')}")
        chosen = template
    elif doc.get("default") is not None:
        chosen = str(doc["default"])
        if chosen not in clusters:
            raise ConfigError(f"{src}: default: {_unknown_template(chosen, names)}")
    elif len(clusters) == 1:
        chosen = names[0]
    elif not clusters:
        return "", {}
    else:
        raise ConfigError(
            f"{src}: default: missing; set it or pass --template (templates: {', '.join(names)})"
        )

    chain = [chosen]
    while (parent := (clusters[chain[-1]] or {}).get("extends")) is not None:
        here = f"{src}: clusters.{chain[-1]}.extends"
        if not isinstance(parent, str):
            raise ConfigError(f"{here}: must be a template name (got {parent!r})")
        if parent not in clusters:
            raise ConfigError(f"{here}: {_unknown_template(parent, names)}")
        if parent in chain:
            cycle = " -> ".join([*chain[chain.index(parent) :], parent])
            raise ConfigError(f"{here}: cycle {cycle}")
        chain.append(parent)

    merged: dict[str, Any] = {}
    for name in reversed(chain):
        merged.update({k: v for k, v in (clusters[name] or {}).items() if k != "extends"})
    return chosen, merged


class _Env(dict):
    """``os.environ`` as seen by the template; a marker so errors can name the variable."""


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined that says "environment variable X is not set" for ``env.X``."""

    @property
    def _undefined_message(self) -> str:
        if isinstance(self._undefined_obj, _Env) and not self._undefined_hint:
            name = self._undefined_name
            return f"environment variable {name} is not set (use env.{name} | default(...))"
        return super()._undefined_message


def _render(src: str, text: str) -> str:
    """Render the file with ``env`` available; undefined names fail loudly with a line."""
    jenv = jinja2.Environment(undefined=_Undefined, keep_trailing_newline=True)
    try:
        return jenv.from_string(text).render(env=_Env(os.environ))
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"{src}: line {exc.lineno}: template syntax error: {exc.message}"
        ) from None
    except Exception as exc:  # any render-time failure: undefined, filter, arithmetic
        line, tb = None, exc.__traceback__
        while tb is not None:  # jinja2 rewrites frames so the template's line shows up
            if tb.tb_frame.f_code.co_filename == "<template>":
                line = tb.tb_lineno
            tb = tb.tb_next
        at = f"line {line}: " if line else ""
        raise ConfigError(f"{src}: {at}template error: {exc}") from None


def _parse(src: str, text: str) -> dict[str, Any]:
    """Parse rendered YAML into a mapping with only the known top-level keys."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{src}: {at}YAML syntax error: {problem}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{src}: must be a mapping with 'default' and 'clusters'")
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            hint = _did_you_mean(str(key), TOP_LEVEL_KEYS)
            raise ConfigError(f"{src}: {key}: unknown key{hint}")
    return doc


def _check_key(cfg: ClusterConfig, where: str) -> None:
    """Refuse keys ssh itself would refuse, before any instance is paid for."""
    key, shown = cfg.key_path, _show(cfg.key_path)
    if not key.is_file():
        raise ConfigError(f"{where}: key file {shown} does not exist")
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{where}: key file {shown} is readable by others (mode {mode:04o}): "
            f"run chmod 600 {shown}"
        )
    if not cfg.public_key_path.is_file():
        pub = _show(cfg.public_key_path)
        raise ConfigError(
            f"{where}: public key {pub} does not exist: run ssh-keygen -y -f {shown} > {pub}"
        )


def _where(source: str, template: str, field: str, overrides: Mapping[str, object]) -> str:
    """Name a field the way the user wrote it: a CLI flag or a dotted path in the file."""
    if field in overrides:
        return _flag(field)
    return f"{source}: clusters.{template}.{field}" if template else f"{source}: {field}"


def _describe(err: Mapping[str, Any]) -> str:
    """Turn one pydantic error into "must be ... (got X)"."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "extra_forbidden":
        return "unknown key"
    bounds = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
              "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}  # fmt: skip
    if kind in bounds:
        key, op = bounds[kind]
        msg = f"must be {op} {ctx[key]}"
    else:
        msg = err["msg"].replace("Input should be", "must be")
    return f"{msg} (got {err['input']!r})"


def _unknown_template(name: str, names: list[str], where: str = "") -> str:
    hint = _did_you_mean(name, names) or f" (templates: {', '.join(names) or 'none'})"
    return f"unknown template {name!r}{where}{hint}"


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _show(path: Path) -> str:
    """A path as the user would type it, with the home directory as ``~``."""
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text == home or text.startswith(home + os.sep) else text
