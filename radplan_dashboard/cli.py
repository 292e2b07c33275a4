"""``python -m radplan_dashboard``: ``serve`` starts the dashboard; ``users add|list|remove|set-role`` manage accounts."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from radplan_dashboard.accounts import ROLES, AccountError, UserStore


def _store(args: argparse.Namespace) -> UserStore:
    from radplan.settings import radplan_home

    home = (args.home or radplan_home()).resolve()
    return UserStore(home / "dashboard" / "users.json")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password (12+ characters): ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the two passwords differ")
    return first


def run_users(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if args.users_command == "add":
            user = store.add(args.name, args.role, _read_password(args))
            print(f"added {user.name} ({user.role}) to {store.path}")
        elif args.users_command == "remove":
            store.remove(args.name)
            print(f"removed {args.name}")
        elif args.users_command == "set-role":
            store.set_role(args.name, args.role)
            print(f"{args.name} is now {args.role}")
        elif args.users_command == "set-password":
            store.set_password(args.name, _read_password(args))
            print(f"password of {args.name} changed")
        else:
            for user in store.list():
                print(f"{user.name}\t{user.role}")
    except AccountError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from radplan.errors import MissingKeyError
    from radplan.settings import disable_telemetry
    from radplan_dashboard.app import create_app
    from radplan_dashboard.config import settings_from_environment

    disable_telemetry()
    try:
        settings = settings_from_environment(args.home)
    except (MissingKeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    host = args.host or settings.host
    port = args.port or settings.port
    if not UserStore(settings.users_file).list() and not settings.oidc_enabled:
        print(f"no accounts yet: add one with `python -m radplan_dashboard users add NAME --role administrator` "
              f"(stored in {settings.users_file})", file=sys.stderr)
    print(f"radplan dashboard on http://{host}:{port} reading {settings.lake}", file=sys.stderr)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False,
                proxy_headers=False, server_header=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="start the dashboard and the CDS Hooks service")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1, RADPLAN_DASHBOARD_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8050, RADPLAN_DASHBOARD_PORT)")
    serve.add_argument("--home", type=Path, default=None, help="RADPLAN_HOME (default: the environment's, else ./.radplan)")
    serve.set_defaults(func=run_serve)

    users = subparsers.add_parser("users", help="local accounts (argon2id hashes in $RADPLAN_HOME/dashboard/users.json)")
    users.add_argument("--home", type=Path, default=None, help="RADPLAN_HOME (default: the environment's, else ./.radplan)")
    actions = users.add_subparsers(dest="users_command", required=True)
    add = actions.add_parser("add", help="add an account (asks for the password)")
    add.add_argument("name", help="a role or pseudonymous id such as oncologist-03 (no personal names)")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    actions.add_parser("list", help="list accounts and roles")
    remove = actions.add_parser("remove", help="remove an account")
    remove.add_argument("name")
    role = actions.add_parser("set-role", help="change an account's role")
    role.add_argument("name")
    role.add_argument("--role", choices=ROLES, required=True)
    password = actions.add_parser("set-password", help="change an account's password")
    password.add_argument("name")
    password.add_argument("--password-stdin", action="store_true")
    for parser in (users, *actions.choices.values()):
        parser.set_defaults(func=run_users)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radplan_dashboard", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    if getattr(args, "home", None) is None:
        args.home = None
    return args.func(args)
