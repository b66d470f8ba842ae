"""`#DW` directives: the dwdparse grammar, DWDirectiveRule validation, nnf-sos's cross-directive rules,
and getting the directives out of a Slurm job script or a Flux `dw` attribute.

Everyone validates through `validate_job` / `check_job`, so a job is judged the same way by the CLI,
the Slurm and Flux adapters and the local backend. Importing this module costs only the standard
library; PyYAML is imported the first time a ruleset file is read, and the bundled ruleset is parsed
and compiled once per process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dwsbridge.errors import ConfigError, DirectiveError, ValidationFailed

PREFIX = "#DW"
BUNDLED_RULESET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "nnf-ruleset.yaml")
RULE_TYPES = ("integer", "bool", "string", "list-of-string")
STAGING_COMMANDS = ("copy_in", "copy_out")
POOL_COMMANDS = ("jobdw", "create_persistent")  # where Slurm's pool= may appear (next to capacity=)
JOB_VAR = "$DW_JOB_"
PERSISTENT_VAR = "$DW_PERSISTENT_"

# Go's strings.Fields splits on unicode.IsSpace; Python's str.split() would also split on \x1c-\x1f.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_FIELD = re.compile(f"[^{re.escape(GO_SPACE)}]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi accepts
_BOOL = re.compile(r"(?i)(?:true|false)")  # dwdparse's (?i)^(true|false)$
_PLAIN_KEY = re.compile(r"\^?([A-Za-z0-9_-]+)\$?")
_INT64 = 2**63
_C_SPACE = " \t\n\v\f\r"  # C's isspace(), which Slurm uses when it joins continued lines


@dataclass(frozen=True)
class Directive:
    """One parsed `#DW` line. `args` maps each key to its value; None is a bare key (`key` without `=`)."""

    text: str
    line: int
    command: str
    args: dict[str, str | None] = field(hash=False)

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of `key`; `default` when absent; a bare key gives None."""
        return self.args.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.args

    @property
    def name(self) -> str | None:
        return self.args.get("name")

    @property
    def where(self) -> str:
        """How messages point at this directive: its line when known, else its text."""
        return f"line {self.line}" if self.line else f"'{self.text}'"

    def error(self, reason: str, argument: str = "") -> DirectiveError:
        return DirectiveError(reason, directive=self.text, line=self.line, argument=argument)


def fields_of(text: str) -> list[str]:
    """The whitespace-separated tokens of a line, exactly as Go's strings.Fields makes them."""
    return _FIELD.findall(text)


def parse_directive(text: str, line: int = 0) -> Directive:
    """Parse one directive with dwdparse's grammar; raise DirectiveError when it is not one."""
    if not isinstance(text, str):
        raise DirectiveError(f"a directive must be a string, not {type(text).__name__}", line=line)
    shown = text.strip(GO_SPACE)
    tokens = fields_of(text)
    if not tokens:
        raise DirectiveError("empty directive: write '#DW <command> key=value ...'", line=line)
    if tokens[0] != PREFIX:
        if tokens[0].startswith(PREFIX):
            reason = f"'{tokens[0]}' is not '#DW': put a space between '#DW' and the command"
        else:
            reason = "a directive starts with '#DW' followed by a space and a command"
        raise DirectiveError(reason, directive=shown, line=line)
    if len(tokens) == 1:
        raise DirectiveError(
            "no command after '#DW' (e.g. '#DW jobdw type=xfs capacity=10GiB name=data')",
            directive=shown,
            line=line,
        )
    args: dict[str, str | None] = {}
    for token in tokens[2:]:
        key, sep, value = token.partition("=")
        if key in args:
            raise DirectiveError(
                f"repeated argument '{key}': give each argument once",
                directive=shown,
                line=line,
                argument=key,
            )
        args[key] = value if sep else None
    return Directive(text=shown, line=line, command=tokens[1], args=args)


def format_directive(command: str, args: Mapping[str, str | None]) -> str:
    """The canonical text of a directive: `#DW command key=value key ...`."""
    parts = [PREFIX, command]
    parts += [key if value is None else f"{key}={value}" for key, value in args.items()]
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------
# Rulesets (DWDirectiveRule)


@dataclass(frozen=True)
class RuleDef:
    """One `ruleDefs[]` entry, its regular expressions compiled."""

    key: str
    type: str
    key_re: re.Pattern[str]
    pattern: str = ""
    pattern_re: re.Pattern[str] | None = None
    patterns: tuple[re.Pattern[str], ...] = ()
    min: int = 0
    max: int = 0
    is_required: bool = False
    is_value_required: bool = False
    unique_within: str = ""

    @property
    def display_key(self) -> str:
        """The key as a user writes it (`^name$` -> `name`), or the regular expression itself."""
        plain = _PLAIN_KEY.fullmatch(self.key)
        return plain.group(1) if plain else self.key


@dataclass(frozen=True)
class CommandRule:
    """One `spec[]` entry of a DWDirectiveRule: what one `#DW` command accepts."""

    command: str
    rule_defs: tuple[RuleDef, ...]
    driver_id: str = ""  # driverLabel, else the DWDirectiveRule's metadata.name
    watch_states: tuple[str, ...] = ()

    def find(self, key: str) -> RuleDef | None:
        """The first ruleDef whose key expression is found in `key` (dwdparse's unanchored search)."""
        for rule in self.rule_defs:
            if rule.key_re.search(key):
                return rule
        return None


class RuleSet:
    """The DWDirectiveRules a site runs; `load()` without a path gives the bundled NNF ruleset."""

    def __init__(self, rules: Sequence[CommandRule], source: str = "<rules>") -> None:
        self.rules = tuple(rules)
        self.source = source
        self._by_command: dict[str, list[CommandRule]] = {}
        for rule in self.rules:
            self._by_command.setdefault(rule.command, []).append(rule)

    def __repr__(self) -> str:
        return f"RuleSet({self.source!r}, commands={list(self._by_command)})"

    @property
    def commands(self) -> list[str]:
        return list(self._by_command)

    def rules_for(self, command: str) -> list[CommandRule]:
        return list(self._by_command.get(command, ()))

    def accepts_key(self, command: str, key: str) -> bool:
        return any(rule.find(key) is not None for rule in self._by_command.get(command, ()))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> RuleSet:
        """Read a DWDirectiveRule YAML file (one or several documents); cached per file version."""
        source = os.fspath(path) if path is not None else BUNDLED_RULESET
        try:
            st = os.stat(source)
            cache_key = (os.path.abspath(source), st.st_mtime_ns, st.st_size)
            cached = _RULESET_CACHE.get(cache_key)
            if cached is not None:
                return cached
            with open(source, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read ruleset {source}: {exc.strerror or exc}") from exc
        ruleset = cls.from_yaml(data, source=source)
        _RULESET_CACHE[cache_key] = ruleset
        return ruleset

    @classmethod
    def from_yaml(cls, data: str | bytes, source: str = "<rules>") -> RuleSet:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            documents = list(yaml.load_all(data, Loader=loader))
        except Exception as exc:  # YAMLError, and whatever a pathological document makes the parser raise
            raise ConfigError(f"ruleset {source} is not valid YAML: {exc}") from exc
        return cls.from_documents(documents, source=source)

    @classmethod
    def from_documents(cls, documents: Iterable[Any], source: str = "<rules>") -> RuleSet:
        """Build from parsed DWDirectiveRule objects (dicts); a `kind: List` document is unpacked."""
        rules: list[CommandRule] = []
        for index, doc in enumerate(_flatten_lists(documents)):
            where = f"ruleset {source}, document {index + 1}"
            if not isinstance(doc, dict):
                raise ConfigError(f"{where}: expected a DWDirectiveRule mapping, found {type(doc).__name__}")
            kind = doc.get("kind", "DWDirectiveRule")
            if kind != "DWDirectiveRule":
                raise ConfigError(f"{where}: kind is {kind!r}, expected DWDirectiveRule")
            metadata = doc.get("metadata") or {}
            default_driver = str(metadata.get("name", "")) if isinstance(metadata, dict) else ""
            spec = doc.get("spec")
            if not isinstance(spec, list):
                raise ConfigError(f"{where}: 'spec' must be a list of {{command, ruleDefs}} entries")
            for n, entry in enumerate(spec):
                rules.append(_command_rule(entry, f"{where}, spec[{n}]", default_driver))
        if not rules:
            raise ConfigError(f"ruleset {source} defines no commands")
        return cls(rules, source=source)

    def validate(
        self, directive: Directive, unique: dict[tuple[str, str], Directive]
    ) -> list[DirectiveError]:
        """Every rule problem of one directive; `unique` carries uniqueWithin values across the job."""
        candidates = self._by_command.get(directive.command)
        if not candidates:
            return [directive.error(self._unknown_command(directive.command))]
        errors: list[DirectiveError] = []
        for rule in candidates:
            errors += _check_against(rule, directive, unique)
        return errors

    def _unknown_command(self, command: str) -> str:
        known = ", ".join(self._by_command)
        folded = [c for c in self._by_command if c.lower() == command.lower()]
        hint = f"; commands are case-sensitive: did you mean '{folded[0]}'?" if folded else ""
        return f"unknown command '{command}' (this site's rules accept: {known}){hint}"


_RULESET_CACHE: dict[tuple[str, int, int], RuleSet] = {}


def _flatten_lists(documents: Iterable[Any]) -> Iterable[Any]:
    for doc in documents:
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from (item for item in doc["items"] if item is not None)
        else:
            yield doc


def _compile(pattern: Any, where: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise ConfigError(f"{where}: expected a regular expression string, found {pattern!r}")
    try:
        # RE2 (Go) classes such as \d and \w are ASCII-only; re.ASCII makes Python agree.
        return re.compile(pattern, re.ASCII)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid regular expression {pattern!r}: {exc}") from exc


def _typed(entry: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = entry.get(key, default)
    if value is None:
        return default
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: '{key}' must be an integer, found {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise ConfigError(f"{where}: '{key}' must be a {kind.__name__}, found {value!r}")
    return value


def _command_rule(entry: Any, where: str, default_driver: str) -> CommandRule:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with 'command' and 'ruleDefs'")
    command = entry.get("command")
    if not isinstance(command, str) or not command:
        raise ConfigError(f"{where}: 'command' must be a non-empty string")
    where = f"{where} ({command})"
    raw_defs = entry.get("ruleDefs") or []
    if not isinstance(raw_defs, list):
        raise ConfigError(f"{where}: 'ruleDefs' must be a list")
    defs = tuple(_rule_def(d, f"{where}, ruleDefs[{i}]") for i, d in enumerate(raw_defs))
    watch = _typed(entry, "watchStates", str, "", where)
    driver = _typed(entry, "driverLabel", str, "", where) or default_driver
    states = tuple(s.strip() for s in watch.split(",") if s.strip())
    return CommandRule(command=command, rule_defs=defs, driver_id=driver, watch_states=states)


def _rule_def(entry: Any, where: str) -> RuleDef:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping with 'key' and 'type'")
    key = entry.get("key")
    if not isinstance(key, str):
        raise ConfigError(f"{where}: 'key' must be a regular expression string")
    rule_type = entry.get("type")
    if rule_type not in RULE_TYPES:
        raise ConfigError(
            f"{where}: unsupported rule type {rule_type!r} (use one of {', '.join(RULE_TYPES)})"
        )
    pattern = _typed(entry, "pattern", str, "", where)
    raw_patterns = entry.get("patterns") or []
    if not isinstance(raw_patterns, list):
        raise ConfigError(f"{where}: 'patterns' must be a list of regular expressions")
    if rule_type == "list-of-string" and not raw_patterns:
        raise ConfigError(f"{where}: a list-of-string rule needs 'patterns'")
    return RuleDef(
        key=key,
        type=rule_type,
        key_re=_compile(key, f"{where} key"),
        pattern=pattern,
        pattern_re=_compile(pattern, f"{where} pattern") if pattern else None,
        patterns=tuple(_compile(p, f"{where} patterns") for p in raw_patterns),
        min=_typed(entry, "min", int, 0, where),
        max=_typed(entry, "max", int, 0, where),
        is_required=_typed(entry, "isRequired", bool, False, where),
        is_value_required=_typed(entry, "isValueRequired", bool, False, where),
        unique_within=_typed(entry, "uniqueWithin", str, "", where),
    )


def _check_against(
    rule: CommandRule, directive: Directive, unique: dict[tuple[str, str], Directive]
) -> list[DirectiveError]:
    errors: list[DirectiveError] = []
    present: set[int] = set()
    for key, raw in directive.args.items():
        rdef = rule.find(key)
        if rdef is None:
            accepted = ", ".join(r.display_key for r in rule.rule_defs) or "no arguments"
            errors.append(
                directive.error(f"unsupported argument '{key}' ({rule.command} accepts: {accepted})", key)
            )
            continue
        present.add(id(rdef))
        if raw is None:
            if rdef.type == "bool" and not rdef.is_value_required:
                raw = "true"
            else:
                errors.append(directive.error(f"argument '{key}' requires a value: write {key}=<value>", key))
                continue
        if rdef.is_value_required and raw == "":
            errors.append(directive.error(f"argument '{key}' requires a value: write {key}=<value>", key))
            continue
        problem = _check_value(rdef, key, raw)
        if problem:
            errors.append(directive.error(problem, key))
            continue
        if rdef.unique_within:
            slot = (rdef.unique_within, raw)
            first = unique.setdefault(slot, directive)
            if first is not directive:
                errors.append(
                    directive.error(
                        f"argument '{key}' value '{raw}' is already used by the directive on {first.where}; "
                        f"values of '{rdef.unique_within}' must be unique within a job",
                        key,
                    )
                )
    for rdef in rule.rule_defs:
        if rdef.is_required and id(rdef) not in present:
            errors.append(
                directive.error(f"missing required argument '{rdef.display_key}'", rdef.display_key)
            )
    return errors


def _check_value(rdef: RuleDef, key: str, value: str) -> str:
    """The problem with one value, or '' when it satisfies the rule."""
    if rdef.type == "integer":
        if not _INTEGER.fullmatch(value) or not -_INT64 <= int(value) < _INT64:
            return f"argument '{key}' value '{value}' is not an integer"
        number = int(value)
        if rdef.max != 0 and number > rdef.max:
            return f"argument '{key}' value {number} is greater than the maximum {rdef.max}"
        if rdef.min != 0 and number < rdef.min:
            return f"argument '{key}' value {number} is less than the minimum {rdef.min}"
    elif rdef.type == "bool":
        if not _BOOL.fullmatch(value):
            return f"argument '{key}' value '{value}' is not a boolean: use true or false"
    elif rdef.type == "string":
        if rdef.pattern_re is not None and not rdef.pattern_re.search(value):
            return f"argument '{key}' value '{value}' does not match {rdef.pattern}"
    elif rdef.type == "list-of-string":
        seen: set[str] = set()
        for word in value.split(","):
            if not any(p.search(word) for p in rdef.patterns):
                allowed = ", ".join(p.pattern for p in rdef.patterns)
                return f"argument '{key}' item '{word}' does not match any of {allowed}"
            if word in seen:
                return f"argument '{key}' lists '{word}' more than once"
            seen.add(word)
    return ""


_BUNDLED: RuleSet | None = None


def bundled_ruleset() -> RuleSet:
    """The NNF ruleset shipped inside the package, parsed once per process."""
    global _BUNDLED
    if _BUNDLED is None:
        _BUNDLED = RuleSet.load(BUNDLED_RULESET)
    return _BUNDLED


# --------------------------------------------------------------------------------------------------
# Staging paths ($DW_JOB_<name>, $DW_PERSISTENT_<name>, global paths)


def job_env_name(name: str) -> str:
    """The environment variable DWS sets for a jobdw: `DW_JOB_<name with - as _>`."""
    return "DW_JOB_" + name.replace("-", "_")


def persistent_env_name(name: str) -> str:
    return "DW_PERSISTENT_" + name.replace("-", "_")


def split_staging_path(value: str) -> tuple[str, str, str]:
    """`(kind, name, path)` of a copy_in/copy_out argument, as nnf-sos reads it.

    kind is "job" (`$DW_JOB_<var>[/path]`), "persistent" (`$DW_PERSISTENT_<var>[/path]`) or
    "global" (anything else; name is ""). The storage name is the variable's suffix with `_` read as
    `-`; path is "" or starts with "/".
    """
    for kind, prefix in (("job", JOB_VAR), ("persistent", PERSISTENT_VAR)):
        if value.startswith(prefix):
            variable, slash, rest = value[len(prefix) :].partition("/")
            return kind, variable.replace("_", "-"), slash + rest
    return "global", "", value


def _check_staging(directive: Directive, by_command: Mapping[str, list[Directive]]) -> list[DirectiveError]:
    errors: list[DirectiveError] = []
    for arg in ("source", "destination"):
        value = directive.get(arg)
        if not value:
            continue  # missing or empty: the ruleset reports it
        kind, name, _ = split_staging_path(value)
        if kind == "global":
            if not value.startswith("/") and not _is_s3_url(value):  # s3://: staging_s3.py judges it
                hint = ""
                if value.startswith("${DW_"):
                    hint = "; write the variable without braces, e.g. $DW_JOB_data/file"
                errors.append(
                    directive.error(
                        f"argument '{arg}' value '{value}' must be $DW_JOB_<name>[/path], "
                        f"$DW_PERSISTENT_<name>[/path] or an absolute path{hint}",
                        arg,
                    )
                )
            continue
        command = "jobdw" if kind == "job" else "persistentdw"
        targets = [d for d in by_command.get(command, []) if d.name == name]
        if not targets:
            known = ", ".join(sorted({d.name for d in by_command.get(command, []) if d.name})) or "none"
            errors.append(
                directive.error(
                    f"argument '{arg}' value '{value}' names {command} storage '{name}', but the job has no "
                    f"'#DW {command} ... name={name}' (its {command} names: {known})",
                    arg,
                )
            )
        elif kind == "job" and targets[0].get("type") == "raw":
            errors.append(
                directive.error(
                    f"argument '{arg}' value '{value}': data movement cannot use raw job storage '{name}' "
                    f"(on {targets[0].where}); use type=xfs, gfs2 or lustre",
                    arg,
                )
            )
    return errors


def _is_s3_url(value: str) -> bool:
    from copyoffload.s3url import is_s3_url

    return is_s3_url(value)


def _s3_staging_errors(directives: Sequence[Directive], backend: str | None) -> list[DirectiveError]:
    """dwsbridge/staging_s3.py's checks, imported only for a job that has an s3:// path at all."""
    if not any(d.command in STAGING_COMMANDS and "s3://" in d.text.lower() for d in directives):
        return []
    from dwsbridge.staging_s3 import s3_staging_errors

    return s3_staging_errors(directives, backend)


def _cross_directive(directives: Sequence[Directive], total: int) -> list[DirectiveError]:
    """nnf-sos's checks at Proposal that look at the whole job."""
    errors: list[DirectiveError] = []
    by_command: dict[str, list[Directive]] = {}
    for d in directives:
        by_command.setdefault(d.command, []).append(d)
    for d in directives:
        if d.command in ("create_persistent", "destroy_persistent") and total > 1:
            errors.append(
                d.error(
                    f"{d.command} must be the only directive of its job (this job has {total}); "
                    "submit it as a job of its own"
                )
            )
    containers = by_command.get("container", [])
    for extra in containers[1:]:
        errors.append(
            extra.error(
                f"only one container directive is allowed per job; the first is on {containers[0].where}"
            )
        )
    for d in directives:
        if d.command in STAGING_COMMANDS:
            errors += _check_staging(d, by_command)
    return errors


# --------------------------------------------------------------------------------------------------
# Slurm's pool= key


def strip_slurm_keys(directive: Directive) -> Directive:
    """The directive without Slurm's `pool=` argument (DWS does not know it); text keeps its spacing."""
    if "pool" not in directive.args:
        return directive
    args = {k: v for k, v in directive.args.items() if k != "pool"}
    text = directive.text
    for index, match in enumerate(_FIELD.finditer(text)):
        if index >= 2 and match.group().partition("=")[0] == "pool":
            start = match.start()
            while start > 0 and text[start - 1] in GO_SPACE:
                start -= 1
            text = text[:start] + text[match.end() :]
            break
    return Directive(text=text, line=directive.line, command=directive.command, args=args)


def _slurm_pool_errors(directive: Directive, pool: str) -> list[DirectiveError]:
    """What Slurm's burst_buffer/lua refuses before our hooks run, said so that the user can fix it."""
    body = directive.text[len(PREFIX) :]
    value = directive.get("pool")
    if "capacity=" in body and "pool=" not in body:
        return [
            directive.error(f"Slurm requires pool=<pool> on a line with capacity=; add pool={pool}", "pool")
        ]
    if directive.has("pool") and directive.command in POOL_COMMANDS and value != pool:
        if not value:
            reason = f"argument 'pool' needs the burst-buffer pool's name: write pool={pool}"
        else:
            reason = (
                f"argument 'pool' value '{value}' is not a burst-buffer pool of this cluster: "
                f"write pool={pool}"
            )
        return [directive.error(reason, "pool")]
    return []


# --------------------------------------------------------------------------------------------------
# The one entry point


def check_job(
    texts: Sequence[str | tuple[int, str]],
    *,
    ruleset: RuleSet | None = None,
    wlm: str | None = None,
    pool: str = "dws",
    strip_pool: bool = True,
    backend: str | None = None,
) -> tuple[list[Directive], list[DirectiveError]]:
    """Validate a job's directives; return the DWS-normalized directives that parsed, and every problem.

    `texts` are directive strings (line unknown) or `(line, text)` pairs from `script_directives`.
    With wlm="slurm", Slurm's own rule (pool= beside capacity=, naming `pool`) is checked too.
    `pool=` is removed from jobdw/create_persistent lines before the DWS rules see them; with
    strip_pool=False it is judged by the ruleset like any argument (what DWS itself would do).
    With backend="kubernetes", s3:// staging paths are refused (real NNF cannot move them).
    """
    rules = ruleset if ruleset is not None else bundled_ruleset()
    errors: list[DirectiveError] = []
    normalized: list[Directive] = []
    checked: list[Directive] = []  # what the rules judge: DWS's arguments, the user's text in messages
    entries: Sequence[Any] = texts if isinstance(texts, (list, tuple)) else _as_list(texts, errors)
    for entry in entries:
        line, text = _entry(entry)
        try:
            directive = parse_directive(text, line)
        except DirectiveError as exc:
            errors.append(exc)
            continue
        if wlm == "slurm":
            errors += _slurm_pool_errors(directive, pool)
        dws = directive
        if (
            strip_pool
            and directive.command in POOL_COMMANDS
            and not rules.accepts_key(directive.command, "pool")
        ):
            dws = strip_slurm_keys(directive)
        normalized.append(dws)
        checked.append(Directive(directive.text, directive.line, directive.command, dws.args))
    unique: dict[tuple[str, str], Directive] = {}
    for directive in checked:
        errors += rules.validate(directive, unique)
    errors += _cross_directive(checked, len(entries))
    errors += _s3_staging_errors(checked, backend)
    errors.sort(key=lambda e: e.line)
    return normalized, errors


def validate_job(
    texts: Sequence[str | tuple[int, str]],
    *,
    ruleset: RuleSet | None = None,
    wlm: str | None = None,
    pool: str = "dws",
    strip_pool: bool = True,
    backend: str | None = None,
) -> list[Directive]:
    """The DWS-normalized directives of a valid job; raises ValidationFailed listing every problem."""
    directives, errors = check_job(
        texts, ruleset=ruleset, wlm=wlm, pool=pool, strip_pool=strip_pool, backend=backend
    )
    if errors:
        raise ValidationFailed(errors)
    return directives


def _as_list(texts: Any, errors: list[DirectiveError]) -> list[Any]:
    if isinstance(texts, str):
        return [texts]
    try:
        return list(texts)
    except TypeError:
        errors.append(DirectiveError(f"directives must be a list of strings, not {type(texts).__name__}"))
        return []


def _entry(entry: Any) -> tuple[int, Any]:
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], int):
        return entry[0], entry[1]
    return 0, entry


# --------------------------------------------------------------------------------------------------
# Getting directives out of a job


def extract_from_script(text: str, prefix: str = PREFIX) -> list[tuple[int, str]]:
    """`(line, directive)` for each directive in a batch script's leading comment block, as Slurm reads it.

    Slurm 22.05 (`_xlate_batch`) splits the script with strtok on newlines, so empty lines are skipped;
    the first line that does not start with `#` ends the scan (a line of spaces does, too). A line is a
    directive when it starts with the prefix (`#DWjobdw` counts, and then fails to parse). A directive
    ending in `\\` continues on the next directive line, whose prefix is dropped. The file Slurm hands
    to hooks ends with a NUL byte, which is ignored. Trailing whitespace is trimmed.
    """
    text = text.rstrip("\x00")
    found: list[tuple[int, str]] = []
    continuing = False
    has_space = False
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        if line[0] != "#":
            break
        if not line.startswith(prefix):
            continuing = False
            continue
        piece = line
        if continuing:
            piece = line[len(prefix) :]
            if has_space:
                piece = piece.lstrip(_C_SPACE)
        continues = piece.endswith("\\")
        if continues:
            has_space = len(piece) >= 2 and piece[-2] in _C_SPACE
            piece = piece[:-1]
        if continuing:
            found[-1] = (found[-1][0], found[-1][1] + piece)
        else:
            found.append((number, piece))
        continuing = continues
    return [(number, directive.rstrip(GO_SPACE)) for number, directive in found]


def script_directives(script_text: str) -> list[tuple[int, str]]:
    """The `#DW` directives of a Slurm batch script (see `extract_from_script`)."""
    return extract_from_script(script_text, PREFIX)


def job_directives(text: str, wlm: str | None = None) -> list[str | tuple[int, str]]:
    """The directives of a job as its WLM hands them over: a Slurm batch script (also the default),
    or, for Flux, the text of the `dw` attribute (split on "#DW ")."""
    if wlm == "flux":
        return list(split_flux(text))
    return list(script_directives(text))


def split_flux(dw: Any, presets: Mapping[str, str] | None = None) -> list[str]:
    """Flux's `attributes.system.dw` (a string or a list of strings) as single directives.

    As flux-coral2 does: each string may hold several directives and is split on "#DW "; every
    non-blank piece is stripped and re-prefixed with "#DW ". A piece that already starts with "#DW"
    (a bare "#DW", or "#DWjobdw") is kept as written, so it gets the same error a Slurm script would.
    A string that is exactly a preset's name (`-S dw=NAME`) is replaced by that preset first.
    """
    if isinstance(dw, str):
        items: list[Any] = [dw]
    elif isinstance(dw, (list, tuple)):
        items = list(dw)
    else:
        raise DirectiveError(
            f"malformed #DW directives: expected a string or a list of strings, not {type(dw).__name__}"
        )
    out: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise DirectiveError(
                f"malformed #DW directives: item {index} is a {type(item).__name__}, not a string"
            )
        if presets and item.strip() in presets:
            item = presets[item.strip()]
        for piece in item.split(PREFIX + " "):
            piece = piece.strip()
            if piece.startswith(PREFIX):  # "#DW" alone or "#DWjobdw": as written, failing as in a script
                out.append(piece)
            elif piece:
                out.append(PREFIX + " " + piece)
    return out
