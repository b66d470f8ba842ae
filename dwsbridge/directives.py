"""`#DW` directives: the dwdparse grammar, DWDirectiveRule validation, nnf-sos's cross-directive rules,
and getting the directives out of a Slurm job script or a Flux `dw` attribute.

Everyone validates through `validate_job` / `check_job`, so a job is judged the same way by the CLI,
the Slurm and Flux adapters and the local backend. Validation runs inside slurmctld's hooks, so it is
linear in the size of the job and bounded (`Limits`: directive count, directive bytes, error lines).
Importing this module costs only the standard library; PyYAML is imported the first time a ruleset
file is read, google-re2 the first time a rule pattern is compiled (dwsbridge.regexp), and the bundled
ruleset is parsed and compiled once per process.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dwsbridge.errors import ConfigError, DirectiveError, MoreErrors, ValidationFailed
from dwsbridge.regexp import Pattern, PatternError, compile_pattern

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
_CAPACITY_NUMBER = re.compile(r"([0-9]+)(?:KiB|KB|MiB|MB|GiB|GB|TiB|TB)?")
CONTAINER_FILESYSTEMS = ("lustre", "gfs2", "raw")  # what nnf-sos mounts into a user container
SHOWN = 60  # characters of a user's key or value quoted in a message


class Limits(NamedTuple):  # a NamedTuple: a tenth of a frozen dataclass's import cost, on the hook path
    """What one job may ask of the validator, which runs inside slurmctld's hooks (config settings
    `max_directives`, `max_directive_bytes`, `max_errors`). DWS stores a job's directives in one
    Kubernetes object, which etcd caps at 1.5 MiB, so the defaults refuse nothing a real job can use."""

    max_directives: int = 1000  # #DW directives in one job
    max_directive_bytes: int = 256 * 1024  # UTF-8 bytes of all of a job's #DW directives
    max_errors: int = 20  # problems reported; the rest are counted ("... and N more")


DEFAULT_LIMITS = Limits()


def clip(text: str, limit: int = SHOWN) -> str:
    """A user's text as a message quotes it: at most `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
            reason = f"'{clip(tokens[0])}' is not '#DW': put a space between '#DW' and the command"
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
                f"repeated argument '{clip(key)}': give each argument once",
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

FOUND_KEYS_KEPT = 256  # per command rule: the keys whose ruleDef is remembered
FOUND_KEY_CHARS = 64  # longer keys are searched every time


@dataclass(frozen=True)
class RuleDef:
    """One `ruleDefs[]` entry, its regular expressions compiled."""

    key: str
    type: str
    key_re: Pattern
    pattern: str = ""
    pattern_re: Pattern | None = None
    patterns: tuple[Pattern, ...] = ()
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
    # key -> what find() gave: jobs use the same few keys, and each find is a search per ruleDef
    _found: dict[str, RuleDef | None] = field(default_factory=dict, init=False, compare=False, repr=False)

    def find(self, key: str) -> RuleDef | None:
        """The first ruleDef whose key expression is found in `key` (dwdparse's unanchored search)."""
        if key in self._found:
            return self._found[key]
        found = next((rule for rule in self.rule_defs if rule.key_re.search(key)), None)
        # bounded in count and size: keys are whatever users write (up to the directive byte limit)
        if len(self._found) < FOUND_KEYS_KEPT and len(key) <= FOUND_KEY_CHARS:
            self._found[key] = found
        return found


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
        return list(self.problems(directive, unique))

    def problems(
        self, directive: Directive, unique: dict[tuple[str, str], Directive]
    ) -> Iterator[DirectiveError]:
        """`validate`, one problem at a time (check_job keeps only as many as it reports)."""
        candidates = self._by_command.get(directive.command)
        if not candidates:
            yield directive.error(self._unknown_command(directive.command))
            return
        for rule in candidates:
            yield from _check_against(rule, directive, unique)

    def _unknown_command(self, command: str) -> str:
        known = ", ".join(self._by_command)
        folded = [c for c in self._by_command if c.lower() == command.lower()]
        hint = f"; commands are case-sensitive: did you mean '{folded[0]}'?" if folded else ""
        return f"unknown command '{clip(command)}' (this site's rules accept: {known}){hint}"


_RULESET_CACHE: dict[tuple[str, int, int], RuleSet] = {}


def _flatten_lists(documents: Iterable[Any]) -> Iterable[Any]:
    for doc in documents:
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from (item for item in doc["items"] if item is not None)
        else:
            yield doc


def _compile(pattern: Any, where: str) -> Pattern:
    """A rule's regular expression, compiled with Go's (RE2) semantics, as DWS compiles it."""
    if not isinstance(pattern, str):
        raise ConfigError(f"{where}: expected a regular expression string, found {pattern!r}")
    try:
        return compile_pattern(pattern)
    except PatternError as exc:
        raise ConfigError(
            f"{where}: invalid regular expression {pattern!r}: {exc} (rulesets use Go's RE2 syntax)"
        ) from exc


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
) -> Iterator[DirectiveError]:
    present: set[int] = set()
    for key, raw in directive.args.items():
        rdef = rule.find(key)
        shown = clip(key)
        if rdef is None:
            accepted = ", ".join(r.display_key for r in rule.rule_defs) or "no arguments"
            yield directive.error(f"unsupported argument '{shown}' ({rule.command} accepts: {accepted})", key)
            continue
        present.add(id(rdef))
        if raw is None:
            if rdef.type == "bool" and not rdef.is_value_required:
                raw = "true"
            else:
                yield directive.error(f"argument '{shown}' requires a value: write {shown}=<value>", key)
                continue
        if rdef.is_value_required and raw == "":
            yield directive.error(f"argument '{shown}' requires a value: write {shown}=<value>", key)
            continue
        problem = _check_value(rdef, shown, raw)
        if problem:
            yield directive.error(problem, key)
            continue
        if rdef.unique_within:
            slot = (rdef.unique_within, raw)
            first = unique.setdefault(slot, directive)
            if first is not directive:
                yield directive.error(
                    f"argument '{shown}' value '{clip(raw)}' is already used by the directive on "
                    f"{first.where}; values of '{rdef.unique_within}' must be unique within a job",
                    key,
                )
    for rdef in rule.rule_defs:
        if rdef.is_required and id(rdef) not in present:
            yield directive.error(f"missing required argument '{rdef.display_key}'", rdef.display_key)


def _atoi(value: str) -> int | None:
    """Go's strconv.Atoi on a 64-bit machine: the number, or None (Python's int() would also take
    `1_000` and spaces, and refuses more than 4,300 digits)."""
    if not _INTEGER.fullmatch(value):
        return None
    sign = "-" if value[0] == "-" else ""
    digits = value.lstrip("+-").lstrip("0") or "0"
    if len(digits) > 19:
        return None
    number = int(sign + digits)
    return number if -_INT64 <= number < _INT64 else None


def _check_value(rdef: RuleDef, key: str, value: str) -> str:
    """The problem with one value, or '' when it satisfies the rule (`key` as messages show it)."""
    shown = clip(value)
    if rdef.type == "integer":
        number = _atoi(value)
        if number is None:
            return f"argument '{key}' value '{shown}' is not an integer"
        if rdef.max != 0 and number > rdef.max:
            return f"argument '{key}' value {number} is greater than the maximum {rdef.max}"
        if rdef.min != 0 and number < rdef.min:
            return f"argument '{key}' value {number} is less than the minimum {rdef.min}"
    elif rdef.type == "bool":
        if not _BOOL.fullmatch(value):
            return f"argument '{key}' value '{shown}' is not a boolean: use true or false"
    elif rdef.type == "string":
        if rdef.pattern_re is not None and not rdef.pattern_re.search(value):
            return f"argument '{key}' value '{shown}' does not match {rdef.pattern}"
    elif rdef.type == "list-of-string":
        seen: set[str] = set()
        for word in value.split(","):
            if not any(p.search(word) for p in rdef.patterns):
                allowed = ", ".join(p.pattern for p in rdef.patterns)
                return f"argument '{key}' item '{clip(word)}' does not match any of {allowed}"
            if word in seen:
                return f"argument '{key}' lists '{clip(word)}' more than once"
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


class JobIndex:
    """The storage directives of one job, by command and name, built in one pass so that every
    cross-directive check is a lookup (a job may carry a thousand directives)."""

    def __init__(self, directives: Sequence[Directive]) -> None:
        self.by_name: dict[tuple[str, str], Directive] = {}
        self.names: dict[str, list[str]] = {}
        self._known: dict[str, str] = {}
        for d in directives:
            name = d.name
            if name and (d.command, name) not in self.by_name:
                self.by_name[(d.command, name)] = d
                self.names.setdefault(d.command, []).append(name)

    def find(self, command: str, name: str) -> Directive | None:
        return self.by_name.get((command, name))

    def known(self, command: str, shown: int = 5) -> str:
        """`a, b, c` (the first `shown` in sorted order, and how many in all), or `none`; made once
        per command, however many messages quote it."""
        cached = self._known.get(command)
        if cached is None:
            names = self.names.get(command, [])
            first = heapq.nsmallest(shown, names)
            listed = ", ".join(clip(n, 40) for n in first) or "none"
            cached = listed if len(names) <= shown else f"{listed}, ... ({len(names)} in all)"
            self._known[command] = cached
        return cached


def _check_staging(directive: Directive, index: JobIndex) -> Iterator[DirectiveError]:
    for arg in ("source", "destination"):
        value = directive.get(arg)
        if not value:
            continue  # missing or empty: the ruleset reports it
        kind, name, _ = split_staging_path(value)
        shown = clip(value)
        if kind == "global":
            if not value.startswith("/") and not _is_s3_url(value):  # s3://: staging_s3.py judges it
                hint = ""
                if value.startswith("${DW_"):
                    hint = "; write the variable without braces, e.g. $DW_JOB_data/file"
                yield directive.error(
                    f"argument '{arg}' value '{shown}' must be $DW_JOB_<name>[/path], "
                    f"$DW_PERSISTENT_<name>[/path] or an absolute path{hint}",
                    arg,
                )
            continue
        command = "jobdw" if kind == "job" else "persistentdw"
        target = index.find(command, name)
        if target is None:
            yield directive.error(
                f"argument '{arg}' value '{shown}' names {command} storage '{clip(name)}', but the job has "
                f"no '#DW {command} ... name={clip(name)}' (its {command} names: {index.known(command)})",
                arg,
            )
        elif kind == "job" and target.get("type") == "raw":
            yield directive.error(
                f"argument '{arg}' value '{shown}': data movement cannot use raw job storage '{clip(name)}' "
                f"(on {target.where}); use type=xfs, gfs2 or lustre",
                arg,
            )


def _is_s3_url(value: str) -> bool:
    from copyoffload.s3url import is_s3_url

    return is_s3_url(value)


def _s3_staging_errors(directives: Sequence[Directive], backend: str | None) -> list[DirectiveError]:
    """dwsbridge/staging_s3.py's checks, imported only for a job that has an s3:// path at all."""
    if not any(d.command in STAGING_COMMANDS and "s3://" in d.text.lower() for d in directives):
        return []
    from dwsbridge.staging_s3 import s3_staging_errors

    return s3_staging_errors(directives, backend)


def _check_container(
    directive: Directive,
    index: JobIndex,
    rules: RuleSet,
    persistent_fs: Callable[[str], str | None] | None,
) -> Iterator[DirectiveError]:
    """nnf-sos's validateContainerDirective, as far as it can be judged without the cluster: each
    storage argument names storage of this job that a container can mount (NNF's messages first)."""
    for arg, value in directive.args.items():
        if arg in ("name", "profile"):
            continue
        if not value:
            continue  # a bare or empty storage argument: the ruleset reports it
        shown = clip(value)
        if arg.startswith("DW_JOB_"):
            target = index.find("jobdw", value)
            if target is None:
                yield directive.error(
                    f"jobdw directive mentioning '{shown}' not found (the job's jobdw names: "
                    f"{index.known('jobdw')})",
                    arg,
                )
                continue
            fs = target.get("type") or ""
        elif arg.startswith("DW_PERSISTENT_"):
            if index.find("persistentdw", value) is None:
                yield directive.error(
                    f"persistentdw directive mentioning '{shown}' not found: add '#DW persistentdw "
                    f"name={shown}' to the job",
                    arg,
                )
                continue
            found = persistent_fs(value) if persistent_fs is not None else None
            if found is None:
                continue  # the instance's filesystem is known only to the backend that holds it
            fs = found
        elif arg.startswith("DW_GLOBAL_"):
            if not value.startswith("/"):
                yield directive.error(
                    f"global Lustre file system containing '{shown}' not found: {clip(arg)} must be the "
                    "absolute path of a directory on a global Lustre file system",
                    arg,
                )
            continue
        else:
            if rules.accepts_key(directive.command, arg):  # else the ruleset already refused it
                yield directive.error(
                    f"unrecognized container argument: {clip(arg)} (use DW_JOB_<name>, DW_PERSISTENT_<name> "
                    "or DW_GLOBAL_<name>)",
                    arg,
                )
            continue
        if fs.lower() not in CONTAINER_FILESYSTEMS:
            yield directive.error(
                f"unsupported container filesystem: {clip(fs)} (storage '{shown}' given as {clip(arg)}; "
                f"a container can mount {', '.join(CONTAINER_FILESYSTEMS)})",
                arg,
            )


def _check_capacity(directive: Directive) -> Iterator[DirectiveError]:
    """nnf-sos refuses a zero capacity at Proposal (the ruleset's pattern allows `0GiB`)."""
    value = directive.get("capacity")
    if value and directive.command in POOL_COMMANDS:
        match = _CAPACITY_NUMBER.fullmatch(value)
        if match and int(match.group(1).lstrip("0") or "0") == 0:
            yield directive.error(
                f"'capacity' must be a non-zero value (capacity={clip(value)}: ask for e.g. capacity=1GiB)",
                "capacity",
            )


def _cross_directive(
    directives: Sequence[Directive],
    total: int,
    rules: RuleSet,
    persistent_fs: Callable[[str], str | None] | None = None,
) -> Iterator[DirectiveError]:
    """nnf-sos's checks at Proposal that look at the whole job; linear in the number of directives."""
    index = JobIndex(directives)
    first_container: Directive | None = None
    for d in directives:
        if d.command in ("create_persistent", "destroy_persistent") and total > 1:
            yield d.error(
                f"{d.command} must be the only directive of its job (this job has {total}); "
                "submit it as a job of its own"
            )
        yield from _check_capacity(d)
        if d.command == "container":
            if first_container is None:
                first_container = d
            else:
                first = first_container.where
                yield d.error(f"only one container directive is allowed per job; the first is on {first}")
            yield from _check_container(d, index, rules, persistent_fs)
        if d.command in STAGING_COMMANDS:
            yield from _check_staging(d, index)


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
                f"argument 'pool' value '{clip(value or '')}' is not a burst-buffer pool of this cluster: "
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
    limits: Limits = DEFAULT_LIMITS,
    persistent_fs: Callable[[str], str | None] | None = None,
    backend: str | None = None,
) -> tuple[list[Directive], list[DirectiveError]]:
    """Validate a job's directives; return the DWS-normalized directives that parsed, and its problems.

    `texts` are directive strings (line unknown) or `(line, text)` pairs from `script_directives`.
    With wlm="slurm", Slurm's own rule (pool= beside capacity=, naming `pool`) is checked too.
    `pool=` is removed from jobdw/create_persistent lines before the DWS rules see them; with
    strip_pool=False it is judged by the ruleset like any argument (what DWS itself would do).
    At most `limits.max_errors` problems are returned, in line order, then one `MoreErrors` counting
    the rest; a job over the directive count or size limits gets one error and is not parsed at all.
    `persistent_fs(name)` gives a persistent instance's filesystem type, when the caller knows it.
    With backend="kubernetes", s3:// staging paths are refused (real NNF cannot move them).
    """
    rules = ruleset if ruleset is not None else bundled_ruleset()
    early: list[DirectiveError] = []
    entries: Sequence[Any] = texts if isinstance(texts, (list, tuple)) else _as_list(texts, early)
    too_big = _over_limits(entries, limits)
    if too_big is not None:
        return [], [too_big]
    problems = _Problems(limits.max_errors)
    problems.extend(early)
    normalized: list[Directive] = []
    checked: list[Directive] = []  # what the rules judge: DWS's arguments, the user's text in messages
    for entry in entries:
        line, text = _entry(entry)
        try:
            directive = parse_directive(text, line)
        except DirectiveError as exc:
            problems.add(exc)
            continue
        if wlm == "slurm":
            problems.extend(_slurm_pool_errors(directive, pool))
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
        problems.extend(rules.problems(directive, unique))
    problems.extend(_cross_directive(checked, len(entries), rules, persistent_fs))
    problems.extend(_s3_staging_errors(checked, backend))
    return normalized, problems.report()


def validate_job(
    texts: Sequence[str | tuple[int, str]],
    *,
    ruleset: RuleSet | None = None,
    wlm: str | None = None,
    pool: str = "dws",
    strip_pool: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    persistent_fs: Callable[[str], str | None] | None = None,
    backend: str | None = None,
) -> list[Directive]:
    """The DWS-normalized directives of a valid job; raises ValidationFailed listing its problems."""
    directives, errors = check_job(
        texts,
        ruleset=ruleset,
        wlm=wlm,
        pool=pool,
        strip_pool=strip_pool,
        limits=limits,
        persistent_fs=persistent_fs,
        backend=backend,
    )
    if errors:
        raise ValidationFailed(errors)
    return directives


class _Problems:
    """The first `keep` problems by line (ties in the order found), and how many others there were:
    memory stays bounded however many problems a job has."""

    def __init__(self, keep: int) -> None:
        self.keep = max(1, keep)
        self._heap: list[tuple[int, int, DirectiveError]] = []  # (-line, -seq): the worst kept on top
        self._seq = 0
        self.dropped = 0

    def add(self, error: DirectiveError) -> None:
        self._seq += 1
        item = (-error.line, -self._seq, error)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)
            self.dropped += 1
        else:
            self.dropped += 1

    def extend(self, errors: Iterable[DirectiveError]) -> None:
        for error in errors:
            self.add(error)

    def report(self) -> list[DirectiveError]:
        kept = [error for _, _, error in sorted(self._heap, key=lambda item: (-item[0], -item[1]))]
        return [*kept, MoreErrors(self.dropped)] if self.dropped else kept


def _over_limits(entries: Sequence[Any], limits: Limits) -> DirectiveError | None:
    """One error when the job has more directives, or more bytes of them, than `limits` allow."""
    if len(entries) > limits.max_directives:
        line, _ = _entry(entries[limits.max_directives])
        return DirectiveError(
            f"the job has {len(entries)} #DW directives; this site allows at most {limits.max_directives} "
            "per job (setting max_directives): merge or drop directives, or split the work into several jobs",
            line=line,
        )
    size = 0
    for entry in entries:
        line, text = _entry(entry)
        if isinstance(text, str):
            size += len(text.encode("utf-8", "surrogatepass"))
        if size > limits.max_directive_bytes:
            return DirectiveError(
                f"the job's #DW directives exceed {limits.max_directive_bytes} bytes by this line "
                "(setting max_directive_bytes): shorten them, or split the work into several jobs",
                line=line,
            )
    return None


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
