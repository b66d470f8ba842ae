"""``copyoffload``: ask the copy-offload server to move data; run a server; make keys, tokens, certs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_AUTH, EXIT_CONNECT = 0, 1, 2, 3, 4, 5

EPILOG = """\
examples (inside a job that has copy-offload; the server, port and token come from the environment):
  copyoffload hello
  copyoffload copy $DW_JOB_scratch/out /lus/project/out --wait      copy and show progress until done
  job=$(copyoffload copy $DW_JOB_scratch/a /lus/project/a)          start a copy, keep its name
  copyoffload copy s3://mybucket/inputs/ $DW_JOB_scratch/in --wait  a prefix from S3 (your ~/.aws creds)
  copyoffload copy $DW_JOB_scratch/out s3://mybucket/results/ --wait   and back
  copyoffload status "$job" --wait 60 --json                        wait up to 60 s, print JSON
  copyoffload list
  copyoffload cancel "$job"

administration:
  copyoffload mk-secrets --out /etc/dwsbridge/tls --from-systemconfiguration sc.yaml --san 127.0.0.1
  copyoffload token new-key /tmp/wf.key && copyoffload token mint /tmp/wf.key --workflow bb12
  copyoffload server --addr :4000 --cert cert.pem --cakey key.pem --tokenkey wf.key --uid 1000 --gid 1000

connection (all optional): --host (else $NNF_CONTAINER_LAUNCHER, /etc/local-rabbit.conf, local-rabbit),
--port (else first of $NNF_CONTAINER_PORTS), --token (else $DW_WORKFLOW_TOKEN), --cert (else
$COPY_OFFLOAD_CERT, /etc/nnf-dm-usercontainer/cert.pem), --skip-tls (plain HTTP, development).

exit codes: 0 ok; 1 the copy failed or was cancelled (or another server error); 2 usage; 3 not found;
4 authentication refused; 5 cannot connect.
"""


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--host", help="server host name (must match its certificate)")
    group.add_argument("--port", type=int, help="server port")
    group.add_argument("--token", help="bearer token (default $DW_WORKFLOW_TOKEN)")
    group.add_argument("--cert", help="CA certificate file")
    group.add_argument("--skip-tls", action="store_true", help="plain HTTP (development only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="copyoffload",
        description="Ask the copy-offload server of your job to copy data for you, and administer it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def client_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _connection_options(p)
        return p

    client_command("hello", "check that the server answers")
    p = client_command("list", "list requests that have not finished")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p = client_command("copy", "start copying SRC to DEST on the server; print the request name")
    p.add_argument("source", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--profile", default="", help="dmProfile name (default: the server's default)")
    p.add_argument("--slots", type=int, default=-1, help="workers: -1 profile default, 0 serial, N workers")
    p.add_argument("--max-slots", type=int, default=-1, help="cap on workers: -1 profile default, 0 none")
    p.add_argument("--dry-run", action="store_true", help="run nothing; the request succeeds")
    p.add_argument("--wait", action="store_true", help="wait until done (progress bar on a terminal)")
    p.add_argument(
        "--json", action="store_true", help="print JSON ({name} or, with --wait, the final status)"
    )
    p = client_command("status", "show a request's status")
    p.add_argument("job", metavar="JOB")
    p.add_argument(
        "--wait", type=int, default=0, metavar="SECS", help="wait up to SECS for it to finish (-1: forever)"
    )
    p.add_argument("--json", action="store_true", help="print the server's JSON")
    p = client_command("cancel", "cancel a request")
    p.add_argument("job", metavar="JOB")
    client_command("shutdown", "ask the server to stop (refused while requests run)")

    p = sub.add_parser("server", help="run a copy-offload server", add_help=False)
    p.add_argument("server_args", nargs=argparse.REMAINDER)

    p = sub.add_parser(
        "mk-secrets",
        help="make the site TLS key and self-signed certificate",
        description="Make the site's copy-offload TLS key (EC secp521r1) and a self-signed certificate valid "
        "365 days whose SAN lists every Rabbit and any extra names and IP addresses. Writes cert.pem and "
        "key.pem (0600) into --out. With --kubernetes also writes the Secret manifests "
        "nnf-dm-usercontainer-server-tls.yaml and nnf-dm-usercontainer-client-tls.yaml; apply them with "
        "`kubectl apply -f DIR/nnf-dm-usercontainer-server-tls.yaml "
        "-f DIR/nnf-dm-usercontainer-client-tls.yaml`. "
        "Copy cert.pem to /etc/nnf-dm-usercontainer/cert.pem on every compute node.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write into")
    p.add_argument(
        "--san", action="append", default=[], metavar="NAME", help="extra DNS name or IP (repeatable)"
    )
    p.add_argument(
        "--from-systemconfiguration", metavar="FILE", help="add every Rabbit of this SystemConfiguration"
    )
    p.add_argument("--kubernetes", action="store_true", help="also write the two Kubernetes Secret manifests")
    p.add_argument("--days", type=int, default=365, help="validity (default %(default)s)")

    p = sub.add_parser("token", help="per-workflow token keys and tokens (upstream format)")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION")
    q = tsub.add_parser("new-key", help="write a new per-workflow signing key (mode 0600)")
    q.add_argument("file", metavar="FILE")
    q = tsub.add_parser("mint", help="print a token signed with KEYFILE")
    q.add_argument("keyfile", metavar="KEYFILE")
    q.add_argument("--workflow", help="bind the token to this workflow (adds the wf claim)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["server"]:
        from copyoffload.server.app import main as server_main

        try:
            return server_main(args_list[1:])
        except SystemExit as exc:  # --help or a usage error from the server's parser
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_USAGE
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "mk-secrets":
        return _mk_secrets(args)
    if args.command == "token":
        return _token(args)
    return _client_command(args)


def _client_command(args: argparse.Namespace) -> int:
    from copyoffload.client import (
        CopyOffloadClient,
        CopyOffloadConfigError,
        CopyOffloadConnectionError,
        CopyOffloadError,
    )

    try:
        client = CopyOffloadClient(
            host=args.host, port=args.port, token=args.token, cert=args.cert, skip_tls=args.skip_tls
        )
        with client:
            return _run_client(client, args)
    except CopyOffloadConfigError as exc:
        print(f"copyoffload: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CopyOffloadConnectionError as exc:
        print(f"copyoffload: cannot connect: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except CopyOffloadError as exc:
        print(f"copyoffload: {exc.message}", file=sys.stderr)
        if exc.code == 404:
            return EXIT_NOT_FOUND
        if exc.code == 401:
            return EXIT_AUTH
        if exc.code == 400:
            return EXIT_USAGE
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _run_client(client: Any, args: argparse.Namespace) -> int:
    out = sys.stdout
    if args.command == "hello":
        print(client.hello(), file=out)
    elif args.command == "list":
        names = client.list()
        if args.json:
            print(json.dumps(names), file=out)
        elif names:
            print("\n".join(names), file=out)
    elif args.command == "copy":
        name = client.copy(
            args.source,
            args.dest,
            profile=args.profile,
            slots=args.slots,
            max_slots=args.max_slots,
            dry_run=args.dry_run,
        )
        if not args.wait:
            print(json.dumps({"name": name}) if args.json else name, file=out)
            return EXIT_OK
        if not args.json:
            print(name, file=out, flush=True)
        # With --json, stdout carries only the final JSON; progress goes to stderr.
        progress_out = sys.stderr if args.json else out
        status = _wait_with_progress(client, name, progress_out, tty=progress_out.isatty())
        if args.json:
            print(json.dumps({"name": name, **status.raw}), file=out)
        return _status_exit(status)
    elif args.command == "status":
        status = client.status(args.job, args.wait)
        if args.json:
            print(json.dumps(status.raw, separators=(",", ":")), file=out)
        else:
            _print_status(status, out)
        return EXIT_OK if not status.finished else _status_exit(status)
    elif args.command == "cancel":
        client.cancel(args.job)
    elif args.command == "shutdown":
        print(client.shutdown(), file=out)
    return EXIT_OK


def _status_exit(status: Any) -> int:
    return EXIT_OK if status.succeeded else EXIT_FAILED


def _print_status(status: Any, out: TextIO) -> None:
    print(f"state: {status.state}", file=out)
    print(f"status: {status.status}", file=out)
    if status.command_status.progress or status.state in ("running", "completed"):
        print(f"progress: {status.command_status.progress}%", file=out)
    for label, value in (
        ("message", status.message),
        ("started", status.start_time),
        ("ended", status.end_time),
        ("elapsed", status.command_status.elapsed_time),
        ("last message", status.command_status.last_message),
    ):
        if value:
            print(f"{label}: {value}", file=out)


def _wait_with_progress(client: Any, name: str, out: TextIO, *, tty: bool) -> Any:
    """Wait for the copy with long server-side waits; draw a bar on a terminal, plain lines otherwise."""
    last_line = ""
    while True:
        status = client.status(name, 1 if tty else 10)
        if tty:
            width = 30
            filled = width * status.progress // 100
            bar = "#" * filled + "-" * (width - filled)
            line = f"\r[{bar}] {status.progress:3d}% {status.state}"
            out.write(line.ljust(len(last_line)))
            out.flush()
            last_line = line
        else:
            line = f"{status.state} {status.progress}%"
            if line != last_line:
                print(line, file=out, flush=True)
                last_line = line
        if status.finished:
            if tty:
                out.write("\n")
            print(
                "{}: {}{}".format(name, status.status, (f" ({status.message})") if status.message else ""),
                file=out,
                flush=True,
            )
            return status


def _mk_secrets(args: argparse.Namespace) -> int:
    from copyoffload import certs

    entries = list(args.san)
    try:
        if args.from_systemconfiguration:
            entries = certs.rabbits_from_systemconfiguration(args.from_systemconfiguration) + entries
        names, ips = certs.split_names(entries)
        if not names and not ips:
            print(
                "copyoffload mk-secrets: give --san NAME or --from-systemconfiguration FILE", file=sys.stderr
            )
            return EXIT_USAGE
        cert_path, key_path = certs.make_site_certificate(args.out, names, ips, days=args.days)
        written = [cert_path, key_path]
        if args.kubernetes:
            written += certs.write_kubernetes_secrets(args.out, cert_path, key_path)
    except certs.CertError as exc:
        print(f"copyoffload mk-secrets: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"copyoffload mk-secrets: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for path in written:
        print(path)
    print(
        "SAN: {}".format(", ".join(["DNS:" + n for n in names] + ["IP:" + i for i in ips])),
        file=sys.stderr,
    )
    return EXIT_OK


def _token(args: argparse.Namespace) -> int:
    from copyoffload import tokens

    if args.token_command == "new-key":
        try:
            if os.path.exists(args.file):
                print(f"copyoffload token new-key: {args.file} exists; not overwriting", file=sys.stderr)
                return EXIT_FAILED
            tokens.write_key_file(args.file)
        except OSError as exc:
            print(f"copyoffload token new-key: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(args.file)
        return EXIT_OK
    if args.token_command == "mint":
        try:
            key = tokens.read_key_file(args.keyfile)
        except tokens.KeyFileError as exc:
            print(f"copyoffload token mint: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(tokens.mint_token(key, args.workflow))
        return EXIT_OK
    print(
        "usage: copyoffload token new-key FILE | copyoffload token mint KEYFILE [--workflow NAME]",
        file=sys.stderr,
    )
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
