"""Stack files: the shipped ones load, a user's folder adds or replaces one, and every broken
file is one InputError naming the file and the field."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from quicmig.errors import InputError
from quicmig.interop.stacks import (
    command_line,
    load_stack_file,
    load_stacks,
    missing,
    read_version,
    render,
)

SHIPPED = {"quicmig", "quicmig-ext", "ngtcp2", "caddy", "chromium", "qh3"}

GOOD = """
name = "{name}"
summary = "a test stack"

[server]
program = "{{python}}"
package = "nothing"
installer = "pip"
version = ["{{python}}", "-c", "print('v 1.2.3')"]
command = ["{{python}}", "-m", "x", "--port={{port}}", "{{options}}", "--docroot={{docroot}}"]
protocols = ["h3"]
path = "/{{file}}"
preferred_address = ["--preferred={{preferred_host}}:{{preferred_port}}"]

[client]
program = "no-such-program-quicmig-test"
package = "no-such-package"
version = ["{{program}}", "--version"]
command = ["{{program}}", "{{url}}"]
protocol = "h3"
body = "download_dir"
"""


def write_stack(folder: Path, text: str, name: str = "mine") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_shipped_stacks_load_with_their_roles_and_capabilities() -> None:
    stacks = load_stacks()
    assert set(stacks) == SHIPPED
    assert stacks["caddy"].roles == ("server",)
    assert stacks["chromium"].roles == ("client",)
    for name in ("quicmig", "ngtcp2", "qh3"):
        assert stacks[name].roles == ("server", "client")
    assert stacks["quicmig-ext"].roles == ("server",)  # the same client as quicmig's
    # What each can do, as the files say it (docs/interop.md has the evidence).
    ngtcp2, qh3, caddy = stacks["ngtcp2"], stacks["qh3"], stacks["caddy"]
    assert ngtcp2.server is not None and ngtcp2.server.preferred_address is not None
    assert ngtcp2.server.disable_active_migration is None
    assert qh3.server is not None and qh3.server.preferred_address is None
    assert caddy.server is not None and caddy.server.tcp
    assert caddy.server.sends_disable_active_migration and caddy.server.preferred_address is None
    assert stacks["quicmig"].client is not None and stacks["quicmig"].client.protocol == "quicmig"
    assert dict(stacks["quicmig-ext"].values) == {"stack": "quicmig"}
    assert dict(stacks["quicmig"].values) == {"stack": "stock"}


def test_variant_values_fill_the_command() -> None:
    stack = load_stacks()["quicmig-ext"]
    assert stack.server is not None
    values = {
        name: f"<{name}>"
        for name in ("python", "host", "port", "cert", "key", "qlog_dir", "keylog", "program")
    }
    argv = command_line(stack.server.launch, {**values, **dict(stack.values)}, ("--extra",))
    assert "--stack=quicmig" in argv and argv[-1] == "--extra"


def test_a_users_folder_adds_a_stack_and_replaces_a_shipped_one(tmp_path: Path) -> None:
    write_stack(tmp_path, GOOD.format(name="mine"))
    write_stack(tmp_path, GOOD.format(name="caddy"), "caddy")
    stacks = load_stacks(tmp_path)
    assert set(stacks) == SHIPPED | {"mine"}
    assert stacks["caddy"].source == tmp_path / "caddy.toml"
    assert stacks["caddy"].roles == ("server", "client")


def test_options_go_where_the_template_says_and_placeholders_fill(tmp_path: Path) -> None:
    (stack,) = load_stack_file(write_stack(tmp_path, GOOD.format(name="mine")))
    assert stack.server is not None
    values = {"python": "py", "port": "4433", "docroot": "/d"}
    argv = command_line(stack.server.launch, values, ("-a", "-b={port}"))
    assert argv == ["py", "-m", "x", "--port=4433", "-a", "-b=4433", "--docroot=/d"]
    assert render('{"root": "{docroot}"}', {"docroot": 'a"b'}, json_strings=True) == (
        '{"root": "a\\"b"}'
    )
    assert read_version(stack.server.launch) == "1.2.3"


def test_a_missing_program_is_one_line_naming_the_package(tmp_path: Path) -> None:
    (stack,) = load_stack_file(write_stack(tmp_path, GOOD.format(name="mine")))
    line = missing(stack, "client")
    assert line == (
        "mine client: no-such-program-quicmig-test is not installed: "
        "apt-get install no-such-package"
    )
    assert missing(stack, "server") is None  # {python} is this interpreter
    assert stack.client is not None
    assert read_version(stack.client.launch).startswith("not installed (apt-get install")
    assert sys.executable


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('summary = "a test stack"\n', ""), "missing field summary"),
        (
            lambda t: t.replace("protocols =", "protocol ="),
            "missing field server.protocols (there is server.protocol: a typo?)",
        ),
        (lambda t: t.replace('body = "download_dir"', 'body = "disk"'), "client.body = 'disk'"),
        (lambda t: t.replace("{url}", "{uri}"), "client.command[1]: unknown placeholder {uri}"),
        (
            lambda t: t.replace('path = "/{file}"', 'path = "/{docroot}"'),
            "server.path: unknown placeholder {docroot}",
        ),
        (lambda t: t.replace('protocols = ["h3"]', "protocols = []"), "server.protocols = []"),
        (lambda t: t.replace('installer = "pip"', 'installer = "brew"'), "server.installer"),
        (lambda t: "client = 3\n" + t.replace("[client]", "[other]"), "client = 3: must be"),
        (lambda t: t.replace('name = "mine"', 'name = "other"'), "must be the file's name"),
        (lambda t: t + "\n[[broken", "malformed TOML"),
        (
            lambda t: t.replace('body = "download_dir"', 'body = "log"'),
            "missing field client.sha256_pattern",
        ),
    ],
    ids=[
        "missing",
        "mistyped",
        "bad-choice",
        "unknown-placeholder",
        "placeholder-of-other-role",
        "empty-list",
        "installer",
        "not-a-table",
        "name",
        "toml",
        "log-needs-pattern",
    ],
)
def test_a_broken_stack_file_is_one_line_naming_file_and_field(
    tmp_path: Path, edit: object, message: str
) -> None:
    assert callable(edit)
    path = write_stack(tmp_path, edit(GOOD.format(name="mine")))
    with pytest.raises(InputError) as raised:
        load_stacks(tmp_path)
    text = str(raised.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_stacks_dir_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"--stacks-dir .*: not a directory"):
        load_stacks(tmp_path / "nowhere")
