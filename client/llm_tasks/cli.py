"""The ``llm-tasks`` command: submit, watch, inspect, cancel and list jobs.

The API's URL and key come from ``--url`` / ``--api-key`` or the environment
(``LLM_TASKS_URL``, ``LLM_TASKS_API_KEY``). ``--json`` prints machine-readable output:
the job (or page) as JSON, and while watching one JSON object per event.

Exit status: 0 when the command (and a watched job) succeeded; 1 when a watched job
ended otherwise (failed, canceled, expired); 2 for an error answer or no API.
"""

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
from pydantic import BaseModel

from llm_tasks.client import Client, Event
from llm_tasks.errors import ApiError, LLMTasksError
from llm_tasks.job_schema import JOB_MODELS, JobPublic, JobStatus

EXIT_OK, EXIT_JOB_NOT_SUCCEEDED, EXIT_ERROR = 0, 1, 2


def main_fields() -> dict[str, str]:
    """Each kind's main text field (``prompt``, ``topic``, ``text``, ``message``), which the
    TEXT argument of ``submit`` fills (for ``chat``, ``messages``: TEXT is the user's)."""
    fields = {}
    for model in JOB_MODELS:
        kind = model.model_fields["kind"].annotation.__args__[0]  # type: ignore[union-attr]
        input_model: Any = model.model_fields["input"].annotation
        required = [name for name, info in input_model.model_fields.items() if info.is_required()]
        fields[kind] = required[0]
    return fields


MAIN_FIELDS = main_fields()


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="llm-tasks",
        description="Submit and follow llm-tasks jobs.",
        epilog="Environment: LLM_TASKS_URL (default http://127.0.0.1:8000), LLM_TASKS_API_KEY.",
    )
    cli.add_argument("--url", help="API base URL (default: $LLM_TASKS_URL or localhost:8000)")
    cli.add_argument("--api-key", help="API key (default: $LLM_TASKS_API_KEY)")
    cli.add_argument("--json", action="store_true", help="machine-readable output")
    commands = cli.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="submit a job")
    submit.add_argument("kind", choices=sorted(MAIN_FIELDS), metavar="KIND")
    submit.add_argument(
        "text",
        nargs="?",
        help="the kind's main field: "
        + ", ".join(f"{kind}: {field}" for kind, field in sorted(MAIN_FIELDS.items())),
    )
    submit.add_argument(
        "--input", help="the whole input as JSON, @file with JSON in it, or - for stdin"
    )
    submit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="one input field (VALUE is JSON if it parses as JSON, else a string); repeatable",
    )
    submit.add_argument("--priority", type=int, help="0 (least urgent) to 9 (most urgent)")
    submit.add_argument("--delay", type=int, dest="delay_seconds", help="start no sooner (s)")
    submit.add_argument("--expires-in", type=int, help="give up if not started within (s)")
    submit.add_argument("--model", help="a declared model's name (llm-tasks models)")
    submit.add_argument(
        "--cancel-after", type=int, help="cancel the job if not finished within (s)"
    )
    submit.add_argument("--webhook", help="a URL that gets a signed POST of the job")
    submit.add_argument(
        "--webhook-event",
        action="append",
        dest="webhook_events_filter",
        choices=["start", "output", "completed"],
        help="an event that gets a webhook delivery (default: completed); repeatable",
    )
    submit.add_argument("--idempotency-key", help="a key that makes a retried submit the same job")
    submit.add_argument(
        "--wait", type=int, help="answer with the finished job if it ends within (s)"
    )
    submit.add_argument("--watch", action="store_true", help="follow the job live until it ends")
    submit.add_argument("-q", "--quiet", action="store_true", help="print the job id only")

    for name, text in (
        ("watch", "follow a job live: progress per step, text as it is generated"),
        ("status", "show a job"),
        ("cancel", "cancel a queued or running job"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("job_id", metavar="ID")

    listing = commands.add_parser("list", help="your recent jobs, newest first")
    listing.add_argument("--status", choices=[status.value for status in JobStatus])
    listing.add_argument("--kind", choices=sorted(MAIN_FIELDS))
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor", help="next_cursor of the previous page")
    commands.add_parser("models", help="the deployment's models and their live workers")
    return cli


def job_input(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.input:
        source = args.input
        if source == "-":
            source = sys.stdin.read()
        elif source.startswith("@"):
            source = Path(source[1:]).read_text()
        loaded = json.loads(source)
        if not isinstance(loaded, dict):
            raise ValueError("--input must be a JSON object")
        values.update(loaded)
    if args.text is not None:
        field = MAIN_FIELDS[args.kind]
        # A chat's TEXT is the user's message: it follows the conversation --input gave.
        values[field] = (
            [*values.get(field, []), {"role": "user", "content": args.text}]
            if field == "messages"
            else args.text
        )
    for assignment in args.set:
        field, sep, raw = assignment.partition("=")
        if not sep or not field:
            raise ValueError(f"--set wants FIELD=VALUE, got {assignment!r}")
        try:
            values[field] = json.loads(raw)
        except ValueError:
            values[field] = raw
    return values


class Watch:
    """Draws a job's events on a terminal: the text of each step as it is generated, with
    the step's live progress bar on the line below it (redrawn in place), and a line per
    step status. Written to a file or a pipe, the same without the live bars."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.width = max(20, shutil.get_terminal_size().columns)
        self.statuses: dict[str, JobStatus] = {}
        self.progress: dict[str, tuple[int, int, str]] = {}  # step: current, total, message
        self.texting: set[str] = set()
        self.current: str | None = None  # the step whose text is being written
        self.column = 0  # where that text ends on its (last) line
        self.text_open = False  # the text's line is not finished
        self.bar_shown = False  # a bar is drawn on the line below the text

    def handle(self, event: Event) -> None:
        if event.event in {"status", "done"} and (job := event.job) is not None:
            self._steps(job)
            if event.event == "done":
                self._done(job)
        elif event.event == "progress" and event.step:
            data = event.data
            self.progress[event.step] = (
                int(data.get("current") or 0),
                int(data.get("total") or 0),
                str(data.get("message") or ""),
            )
            if self.tty:
                self._show_bar(event.step)
        elif event.event == "output" and event.reset:
            self._say(f"[{event.step}] attempt {event.attempt}: the text starts over")
            if event.delta:
                self._text(event.step or "", event.delta)
        elif event.event == "output" and event.delta:
            self._text(event.step or "", event.delta)
        self.out.flush()

    def _clear_bar(self) -> None:
        """Erase the bar and put the cursor back where the text ends."""
        if self.bar_shown:
            self.out.write("\r\033[K")
            if self.text_open:
                self.out.write(f"\033[A\033[{self.column + 1}G")
            self.bar_shown = False

    def _show_bar(self, step: str) -> None:
        current, total, message = self.progress[step]
        if not total:
            return
        self._clear_bar()
        if self.text_open:
            self.out.write("\n")
        line = f"[{step}] {_bar(current, total)} {current}/{total} {message}".rstrip()
        self.out.write("\r\033[K" + line[: self.width - 1])
        self.bar_shown = True

    def _text(self, step: str, delta: str) -> None:
        if self.statuses.get(step) is not JobStatus.RUNNING and step not in self.texting:
            # Text can come before the status change that says the step runs.
            self.statuses[step] = JobStatus.RUNNING
            self._say(f"[{step}] running")
        self._clear_bar()
        if step != self.current:
            if self.text_open:
                self.out.write("\n")
            self.out.write(f"--- {step} ---\n")
            self.current, self.column = step, 0
            self.texting.add(step)
        self.out.write(delta)
        last_line = delta.rsplit("\n", 1)[-1]
        self.column = (
            len(last_line) if "\n" in delta else self.column + len(last_line)
        ) % self.width
        self.text_open = not delta.endswith("\n")
        if self.tty and step in self.progress:
            self._show_bar(step)

    def _say(self, line: str) -> None:
        self._clear_bar()
        if self.text_open:
            self.out.write("\n")
        self.out.write(line + "\n")
        self.current, self.column, self.text_open = None, 0, False

    def _steps(self, job: JobPublic) -> None:
        for step in job.steps:
            if step.progress is not None and step.progress.total:
                progress = step.progress
                self.progress[step.name] = (
                    progress.current,
                    progress.total,
                    progress.message or "",
                )
            if self.statuses.get(step.name) == step.status:
                continue
            self.statuses[step.name] = step.status
            if step.status.finished and step.name in self.progress:
                current, total, _ = self.progress[step.name]
                if step.status is JobStatus.SUCCEEDED:
                    current = total  # the last update may predate the end
                self._say(
                    f"[{step.name}] {step.status.value} {_bar(current, total)} {current}/{total}"
                )
            elif step.status is not JobStatus.QUEUED or len(self.statuses) == 1:
                self._say(f"[{step.name}] {step.status.value}")

    def _done(self, job: JobPublic) -> None:
        took = ""
        if job.started_at and job.finished_at:
            took = f" in {(job.finished_at - job.started_at).total_seconds():.2f} s"
        self._say(f"job {job.id} {job.status.value}{took}")
        if job.error is not None:
            self.out.write(f"error: {job.error.type}: {job.error.message}\n")
        elif job.output is not None and not self.texting:
            self.out.write(_json(job.output) + "\n")


def _bar(current: int, total: int, cells: int = 24) -> str:
    filled = round(cells * min(current, total) / total) if total else 0
    return f"[{'#' * filled}{'.' * (cells - filled)}]"


def _json(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json(indent=2)
    return json.dumps(value, indent=2, ensure_ascii=False)


def describe(job: JobPublic) -> str:
    lines = [
        f"job       {job.id}",
        f"kind      {job.kind.value}",
        f"status    {job.status.value}",
        f"priority  {job.priority}",
        f"created   {job.created_at.isoformat()}",
    ]
    if job.started_at:
        lines.append(f"started   {job.started_at.isoformat()}")
    if job.finished_at:
        lines.append(f"finished  {job.finished_at.isoformat()}")
    if job.progress:
        lines.append(
            f"progress  {job.progress.message or f'{job.progress.current}/{job.progress.total}'}"
        )
    lines.append(f"attempts  {job.attempts}")
    for step in job.steps:
        done = f" ({step.progress.message})" if step.progress and step.progress.message else ""
        lines.append(f"  step {step.name}: {step.status.value}{done}")
    if job.error:
        lines.append(f"error     {job.error.type}: {job.error.message}")
    if job.output is not None:
        lines.append("output")
        lines.append(_json(job.output))
    return "\n".join(lines)


def follow(client: Client, job_id: str, as_json: bool, out: TextIO) -> int:
    watch = Watch(out)
    final: JobPublic | None = None
    for event in client.events(job_id):
        if as_json:
            out.write(json.dumps({"event": event.event, "id": event.id, "data": event.data}) + "\n")
            out.flush()
        else:
            watch.handle(event)
        if event.event == "done":
            final = event.job
    succeeded = final is not None and final.status is JobStatus.SUCCEEDED
    return EXIT_OK if succeeded else EXIT_JOB_NOT_SUCCEEDED


def run(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    match args.command:
        case "submit":
            job = client.submit(
                args.kind,
                job_input(args),
                priority=args.priority,
                delay_seconds=args.delay_seconds,
                expires_in=args.expires_in,
                model=args.model,
                cancel_after=args.cancel_after,
                webhook=args.webhook,
                webhook_events_filter=args.webhook_events_filter,
                idempotency_key=args.idempotency_key,
                wait=args.wait,
            )
            if args.quiet:
                out.write(job.id + "\n")
            elif args.json and not args.watch:
                out.write(job.model_dump_json() + "\n")
            elif not args.json:
                out.write(f"job {job.id} {job.status.value} ({job.kind.value})\n")
                if job.status.finished and not args.watch:  # --wait, and it ended in time
                    out.write(describe(job) + "\n")
            out.flush()
            return follow(client, job.id, args.json, out) if args.watch else EXIT_OK
        case "watch":
            return follow(client, args.job_id, args.json, out)
        case "status":
            job = client.get(args.job_id)
            out.write((job.model_dump_json() if args.json else describe(job)) + "\n")
        case "cancel":
            job = client.cancel(args.job_id)
            out.write(
                job.model_dump_json() + "\n" if args.json else f"job {job.id} {job.status.value}\n"
            )
        case "list":
            page = client.list(
                status=args.status, kind=args.kind, limit=args.limit, cursor=args.cursor
            )
            if args.json:
                out.write(page.model_dump_json() + "\n")
            else:
                out.write(f"{'ID':36}  {'KIND':10}  {'STATUS':9}  CREATED\n")
                for job in page.items:
                    created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
                    out.write(
                        f"{job.id:36}  {job.kind.value:10}  {job.status.value:9}  {created}\n"
                    )
                if page.next_cursor:
                    out.write(f"more: --cursor {page.next_cursor}\n")
        case "models":
            models = client.models()
            if args.json:
                out.write(json.dumps([model.model_dump(mode="json") for model in models]) + "\n")
            else:
                out.write(f"{'NAME':14}  {'ROLE':10}  {'QUEUE':18}  {'WORKERS':7}  SOURCE\n")
                for model in models:
                    out.write(
                        f"{model.name:14}  {model.role.value:10}  {model.queue:18}  "
                        f"{model.workers:<7}  {model.source}\n"
                    )
    return EXIT_OK


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    cli = parser()
    args, extra = cli.parse_known_args(argv)
    # argparse takes KIND and TEXT together, so a TEXT after an option comes back as extra.
    lone = len(extra) == 1 and not extra[0].startswith("-")
    if args.command == "submit" and args.text is None and lone:
        args.text, extra = extra[0], []
    if extra:
        cli.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        with Client(args.url, args.api_key) as client:
            return run(args, client, sys.stdout)
    except ApiError as error:
        print(
            f"error: {error.status} {error.title}" if error.errors else f"error: {error}",
            file=sys.stderr,
        )
        for problem in error.errors:
            where = ".".join(str(part) for part in problem.get("loc", []))
            print(f"  {where}: {problem.get('msg')}", file=sys.stderr)
        return EXIT_ERROR
    except (LLMTasksError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except httpx.HTTPError as error:
        print(f"error: cannot reach the API: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
