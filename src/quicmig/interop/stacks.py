"""QUIC stacks as data: one TOML file per stack says how to start its server and its client
and what each can do.

The shipped files live in `quicmig/interop/stacks/`; `load_stacks(folder)` adds a user's own
folder (a file there with a shipped stack's name replaces it). Adding a stack is adding a file.
Every unknown key, wrong type or unknown `{placeholder}` is an InputError naming the file and
the field. A file can declare `[[variant]]`s (name, extra placeholder values, and optionally the
`roles` it has): one stack per variant, e.g. quicmig's stock aioquic and its extensions.

Templates are lists of strings (one argument each, never split by a shell) whose `{name}`
placeholders are filled per run; a list item `"{options}"` is where the arguments of a
capability (active migration, preferred address, ...) go, at the end when there is none.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from quicmig.errors import InputError

ROLES = ("server", "client")
PROTOCOLS = ("h3", "quicmig")  # HTTP/3, or quicmig's own message protocol (ALPN quicmig)
INSTALLERS = {"apt": "apt-get install", "pip": "pip install"}
BODIES = ("download_dir", "log")  # where a client leaves what it downloaded
OPTIONS = "{options}"  # the list item a capability's arguments replace
VERSION_TIMEOUT = 10.0  # seconds for a program's version command
MIN_SHA256_PREFIX = 16  # hex digits a client must print when it prints only a prefix

# Placeholders every template may use, and the ones of one role only.
COMMON_PLACEHOLDERS = {
    "python": "this Python interpreter",
    "program": "the program, as found on PATH",
    "workdir": "a directory of this endpoint's own, for its files",
    "keylog": "the TLS key log file to write (SSLKEYLOGFILE format)",
    "qlog_dir": "a directory for qlog files (it exists)",
    "host": "the IP address to listen on (server) or to send to (client)",
    "port": "the UDP port to listen on (server) or to send to (client)",
    "server_name": "the TLS server name (SNI) the certificate names",
    "cert": "the server certificate (PEM)",
    "key": "the server's private key (PEM)",
    "ca": "the CA certificate (PEM) that signed the server certificate",
    "size": "the size of the file to transfer, in bytes",
    "file": "the file name of the file to transfer",
    "timeout": "seconds the endpoint may take",
}
SERVER_PLACEHOLDERS = {
    "docroot": "the directory holding the file to serve",
    "preferred_host": "the preferred address to offer (IP)",
    "preferred_port": "the preferred address to offer (port)",
}
CLIENT_PLACEHOLDERS = {
    "url": "https://{server_name}:{port}{path}",
    "spki": "base64 SHA-256 of the server certificate's public key (Chromium's SPKI list)",
    "download_dir": "the directory to save the downloaded file in (it exists, empty)",
    "migrate_at_ms": "milliseconds after the handshake to migrate at (active migration)",
    "local_addresses": "the client's own addresses, comma-separated (it starts from the first)",
    "local_host": "the client's own (first) address, to send from",
}
URL_PLACEHOLDERS = {
    "server_name": COMMON_PLACEHOLDERS["server_name"],
    "size": COMMON_PLACEHOLDERS["size"],
    "file": COMMON_PLACEHOLDERS["file"],
}
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")

Tree = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one endpoint: its program, command, environment and files."""

    program: str  # "{python}" or a name looked up on PATH
    package: str  # what provides it (for the "not installed" line)
    installer: str  # a key of INSTALLERS
    module: str | None  # a Python module the command needs importable
    version: tuple[str, ...]  # command printing the version
    version_pattern: str  # regex; its first match (or group 1) in that output is the version
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # name, template
    files: tuple[tuple[str, str], ...]  # name in {workdir}, template of its text


@dataclass(frozen=True, slots=True)
class ServerSpec:
    launch: Launch
    protocols: tuple[str, ...]  # what its clients may speak
    path: str  # URL path of the served file (template: {size}, {file})
    preferred_address: tuple[str, ...] | None  # arguments to offer one; None: cannot
    disable_active_migration: tuple[str, ...] | None  # arguments to send it; None: cannot
    sends_disable_active_migration: bool  # on every connection, unasked (quic-go 0.29)
    tcp: bool  # also listens on TCP at the same port (its port must be free for both)
    notes: str


@dataclass(frozen=True, slots=True)
class ClientSpec:
    launch: Launch
    protocol: str  # one of PROTOCOLS
    body: str  # one of BODIES
    sha256_pattern: str | None  # body = "log": regex with a group named sha256 (hex)
    active_migration: tuple[str, ...] | None  # arguments to migrate by itself; None: cannot
    follows_preferred_address: bool  # moves to a server's preferred address by itself
    verifies_certificate: bool  # checks the server certificate against {ca} or {spki}
    content_seed: int | None  # the body is content(size, seed) of this seed, not the file's
    # The exit status with which the client says that its own checks of the run failed (not
    # a crash): the run is judged from the capture and the body as for any client.
    verdict_exit_status: int | None
    notes: str


@dataclass(frozen=True, slots=True)
class Stack:
    name: str
    summary: str
    source: Path
    server: ServerSpec | None
    client: ClientSpec | None
    values: tuple[tuple[str, str], ...]  # the variant's own placeholder values

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(
            role
            for role, spec in (("server", self.server), ("client", self.client))
            if spec is not None
        )

    def spec(self, role: str) -> ServerSpec | ClientSpec:
        spec = self.server if role == "server" else self.client
        if spec is None:
            raise InputError(f"stack {self.name} has no {role} ({self.source})")
        return spec


# --- loading -------------------------------------------------------------------------------


def shipped_folder() -> Path:
    return Path(str(resources.files("quicmig") / "interop" / "stacks"))


def load_stacks(folder: Path | None = None) -> dict[str, Stack]:
    """The shipped stacks, then those of `folder` (a user's --stacks-dir), by name."""
    stacks: dict[str, Stack] = {}
    folders = [shipped_folder()]
    if folder is not None:
        if not folder.is_dir():
            raise InputError(f"--stacks-dir {folder}: not a directory of stack .toml files")
        folders.append(folder)
    for where in folders:
        for path in sorted(where.glob("*.toml")):
            for stack in load_stack_file(path):
                stacks[stack.name] = stack
    return stacks


def load_stack_file(path: Path) -> list[Stack]:
    """The stacks one file declares (one, or one per [[variant]])."""
    try:
        tree = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: malformed TOML: {exc}") from None
    return parse_stack(tree, path)


def parse_stack(tree: Tree, path: Path) -> list[Stack]:
    fields = _Fields(tree, path, "")
    name = fields.name("name")
    if name != path.stem:
        raise InputError(f"{path}: name {name!r} must be the file's name ({path.stem!r})")
    summary = fields.text("summary")
    variants = fields.tables("variant")
    server_tree = fields.table("server", required=False)
    client_tree = fields.table("client", required=False)
    fields.done()
    if server_tree is None and client_tree is None:
        raise InputError(f"{path}: a stack needs a [server] or a [client] table (or both)")
    declared: list[tuple[str, dict[str, str]]] = []
    roles_of: dict[str, tuple[str, ...]] = {}
    for index, variant in enumerate(variants):
        where = f"variant[{index}]"
        vfields = _Fields(variant, path, f"{where}.")
        vname = vfields.name("name")
        values = vfields.strings("values", required=False)
        roles_of[vname] = (
            vfields.words("roles", ROLES) if "roles" in variant else ROLES
        )  # a variant that changes one role only need not repeat the other
        vfields.done()
        clash = sorted(
            set(values) & _known(COMMON_PLACEHOLDERS, SERVER_PLACEHOLDERS, CLIENT_PLACEHOLDERS)
        )
        if clash:
            raise InputError(f"{path}: {where}.values: {clash[0]!r} is a built-in placeholder")
        declared.append((vname, values))
    if not declared:
        declared = [(name, {})]
    extra = set().union(*(values for _, values in declared))
    for vname, values in declared:
        if set(values) != extra:
            missing = sorted(extra - set(values))
            raise InputError(f"{path}: variant {vname}: values lacks {missing[0]!r}")
    server = _server(server_tree, path, extra) if server_tree is not None else None
    client = _client(client_tree, path, extra) if client_tree is not None else None
    stacks = []
    for vname, values in declared:
        roles = roles_of.get(vname, ROLES)
        own_server = server if "server" in roles else None
        own_client = client if "client" in roles else None
        if own_server is None and own_client is None:
            raise InputError(f"{path}: variant {vname}: its roles name no table of the file")
        stacks.append(
            Stack(vname, summary, path, own_server, own_client, tuple(sorted(values.items())))
        )
    return stacks


def _known(*tables: Mapping[str, str]) -> set[str]:
    return set().union(*(set(table) for table in tables))


def _server(tree: Tree, path: Path, extra: set[str]) -> ServerSpec:
    fields = _Fields(tree, path, "server.")
    known = _known(COMMON_PLACEHOLDERS, SERVER_PLACEHOLDERS) | extra
    launch = _launch(fields, known)
    protocols = fields.words("protocols", PROTOCOLS)
    url_path = fields.template("path", _known(URL_PLACEHOLDERS))
    if not url_path.startswith("/"):
        raise InputError(f"{path}: server.path {url_path!r} must start with /")
    preferred = fields.arguments("preferred_address", known, required=False)
    disable = fields.arguments("disable_active_migration", known, required=False)
    always = fields.flag("sends_disable_active_migration", default=False)
    tcp = fields.flag("tcp", default=False)
    notes = fields.text("notes", required=False)
    fields.done()
    return ServerSpec(launch, protocols, url_path, preferred, disable, always, tcp, notes)


def _client(tree: Tree, path: Path, extra: set[str]) -> ClientSpec:
    fields = _Fields(tree, path, "client.")
    known = _known(COMMON_PLACEHOLDERS, CLIENT_PLACEHOLDERS) | extra
    launch = _launch(fields, known)
    protocol = fields.word("protocol", PROTOCOLS)
    body = fields.word("body", BODIES)
    pattern = fields.regex("sha256_pattern", required=body == "log")
    if pattern is not None and "sha256" not in re.compile(pattern).groupindex:
        raise InputError(f"{path}: client.sha256_pattern needs a group (?P<sha256>...)")
    active = fields.arguments("active_migration", known, required=False)
    follows = fields.flag("follows_preferred_address", default=False)
    verifies = fields.flag("verifies_certificate", default=True)
    seed = fields.integer("content_seed")
    verdict_exit = fields.integer("verdict_exit_status")
    if verdict_exit == 0:
        raise InputError(f"{path}: client.verdict_exit_status = 0: 0 is success; give the other")
    notes = fields.text("notes", required=False)
    fields.done()
    return ClientSpec(
        launch, protocol, body, pattern, active, follows, verifies, seed, verdict_exit, notes
    )


def _launch(fields: _Fields, known: set[str]) -> Launch:
    program = fields.text("program")
    package = fields.text("package")
    installer = fields.word("installer", tuple(INSTALLERS), default="apt")
    module = fields.text("module", required=False) or None
    version = fields.arguments("version", known)
    assert version is not None
    pattern = fields.regex("version_pattern", required=False) or r"\d+(?:\.\d+)+[\w.+~-]*"
    command = fields.arguments("command", known, options=True)
    assert command is not None
    env = fields.strings("env", required=False)
    for key, value in env.items():
        fields.check_template(f"env.{key}", value, known)
    files = fields.strings("files", required=False)
    for key, value in files.items():
        if "/" in key or key in ("", ".", ".."):
            raise InputError(f"{fields.path}: {fields.prefix}files: {key!r} must be a file name")
        fields.check_template(f"files.{key}", value, known)
    return Launch(
        program,
        package,
        installer,
        module,
        version,
        pattern,
        command,
        tuple(sorted(env.items())),
        tuple(sorted(files.items())),
    )


class _Fields:
    """Typed reads of one TOML table; each error names the file and the field."""

    def __init__(self, tree: Any, path: Path, prefix: str) -> None:
        if not isinstance(tree, dict):
            raise InputError(f"{path}: {prefix.rstrip('.') or 'the file'} must be a table")
        self.tree: Tree = tree
        self.path = path
        self.prefix = prefix
        self.seen: set[str] = set()

    def _get(self, key: str, required: bool) -> Any:
        self.seen.add(key)
        if key not in self.tree:
            if required:
                near = difflib.get_close_matches(key, [str(k) for k in self.tree], n=1)
                typo = f" (there is {self.prefix}{near[0]}: a typo?)" if near else ""
                raise InputError(f"{self.path}: missing field {self.prefix}{key}{typo}")
            return None
        return self.tree[key]

    def _wrong(self, key: str, value: Any, wanted: str) -> InputError:
        return InputError(f"{self.path}: {self.prefix}{key} = {value!r}: {wanted}")

    def done(self) -> None:
        unknown = sorted(set(self.tree) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise InputError(
                f"{self.path}: unknown field {self.prefix}{unknown[0]} (known here: {known})"
            )

    def text(self, key: str, required: bool = True) -> str:
        value = self._get(key, required)
        if value is None:
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            raise self._wrong(key, value, "must be a non-empty string")
        return value

    def name(self, key: str) -> str:
        value = self.text(key)
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.+-]*", value):
            raise self._wrong(key, value, "use lower-case letters, digits and . _ + -")
        return value

    def word(self, key: str, allowed: tuple[str, ...], default: str | None = None) -> str:
        value = self._get(key, default is None)
        if value is None:
            assert default is not None
            return default
        if value not in allowed:
            raise self._wrong(key, value, f"must be one of {', '.join(allowed)}")
        return str(value)

    def words(self, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, True)
        if not isinstance(value, list) or not value or any(v not in allowed for v in value):
            raise self._wrong(key, value, f"must be a non-empty list of {', '.join(allowed)}")
        return tuple(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._wrong(key, value, "must be true or false")
        return value

    def integer(self, key: str) -> int | None:
        value = self._get(key, False)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._wrong(key, value, "must be a whole number")
        return value

    def regex(self, key: str, required: bool) -> str | None:
        value = self.text(key, required) or None
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise self._wrong(key, value, f"not a regular expression ({exc})") from None
        return value

    def table(self, key: str, required: bool) -> Tree | None:
        value = self._get(key, required)
        if value is not None and not isinstance(value, dict):
            raise self._wrong(key, value, f"must be a table [{self.prefix}{key}]")
        return value

    def tables(self, key: str) -> list[Tree]:
        value = self._get(key, False)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self._wrong(key, value, f"must be tables [[{self.prefix}{key}]]")
        return value

    def strings(self, key: str, required: bool) -> dict[str, str]:
        value = self.table(key, required) or {}
        for name, item in value.items():
            if not isinstance(item, str):
                raise InputError(f"{self.path}: {self.prefix}{key}.{name} = {item!r}: not a string")
        return dict(value)

    def template(self, key: str, known: set[str]) -> str:
        value = self.text(key)
        self.check_template(key, value, known)
        return value

    def arguments(
        self, key: str, known: set[str], required: bool = True, options: bool = False
    ) -> tuple[str, ...] | None:
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._wrong(key, value, "must be a list of strings (one per argument)")
        if key in ("command", "version") and not value:
            raise self._wrong(key, value, "must name the program to run")
        for index, item in enumerate(value):
            if options and item == OPTIONS:
                continue
            self.check_template(f"{key}[{index}]", item, known)
        return tuple(value)

    def check_template(self, key: str, value: str, known: set[str]) -> None:
        for match in PLACEHOLDER.finditer(value):
            if match[1] not in known:
                raise InputError(
                    f"{self.path}: {self.prefix}{key}: unknown placeholder {match[0]} (known "
                    f"here: {', '.join('{' + k + '}' for k in sorted(known))})"
                )


# --- using ---------------------------------------------------------------------------------


def render(template: str, values: Mapping[str, str], json_strings: bool = False) -> str:
    """Fill `{name}` placeholders; `json_strings`: values escaped for a JSON string."""

    def fill(match: re.Match[str]) -> str:
        if match[1] not in values:  # the loader refused unknown names; a caller forgot one
            raise KeyError(f"no value for placeholder {match[0]}")
        value = values[match[1]]
        return json.dumps(value)[1:-1] if json_strings else value

    return PLACEHOLDER.sub(fill, template)


def command_line(
    launch: Launch, values: Mapping[str, str], options: tuple[str, ...] = ()
) -> list[str]:
    """The argument list to run, with `options` (a capability's arguments) in place."""
    argv: list[str] = []
    placed = False
    for item in launch.command:
        if item == OPTIONS:
            argv.extend(render(option, values) for option in options)
            placed = True
        else:
            argv.append(render(item, values))
    if not placed:
        argv.extend(render(option, values) for option in options)
    return argv


def resolve_program(launch: Launch) -> str | None:
    """The program's path, or None when it (or its Python module) is not installed."""
    if launch.module is not None and importlib.util.find_spec(launch.module) is None:
        return None
    if launch.program == "{python}":
        return sys.executable
    return shutil.which(launch.program)


def install_hint(launch: Launch) -> str:
    return f"{INSTALLERS[launch.installer]} {launch.package}"


def missing(stack: Stack, role: str) -> str | None:
    """One line saying what is not installed and how to install it, or None."""
    launch = stack.spec(role).launch
    if resolve_program(launch) is not None:
        return None
    what = launch.module if launch.module is not None else launch.program
    return f"{stack.name} {role}: {what} is not installed: {install_hint(launch)}"


def read_version(launch: Launch) -> str:
    """The version the program reports (its version command), or 'unknown (why)'."""
    program = resolve_program(launch)
    if program is None:
        return f"not installed ({install_hint(launch)})"
    values = {"python": sys.executable, "program": program}
    try:
        argv = [render(item, values) for item in launch.version]
    except KeyError as exc:
        return f"unknown ({exc.args[0]} in the version command)"
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    match = re.search(launch.version_pattern, proc.stdout + proc.stderr)
    if match is None:
        return f"unknown (no version in the output of {' '.join(argv)})"
    return match[1] if match.groups() else match[0]
