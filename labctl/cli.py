"""The command line: parse, call, print. No logic lives here.

Every error a user can meet is a LabctlError: printed as one clear message, exit 2 (3 for an
infrastructure failure: labctl.errors.EXIT_INFRASTRUCTURE).
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from labctl import __version__, backends
from labctl.batch.job import REPORT_FILES
from labctl.errors import EXIT_INFRASTRUCTURE, LabctlError
from labctl.harness.scenarios import SCENARIOS
from labctl.interrupts import exit_with_parent, stop_on_interrupts
from labctl.project import Project, find_root
from labctl.spec import DEFAULT_PORT
from labctl.untrusted import printable

#: When output goes to a file or a CI log, a line is as long as its content: a table wrapped at 80 columns
#: breaks mid-row, and a name cut with "…" is lost. Colours are off there (rich's own rule; NO_COLOR too).
LOG_WIDTH = 10_000


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else LOG_WIDTH)


out = _console(stderr=False)
err = _console(stderr=True)


# -- plumbing -----------------------------------------------------------------------------------------

def e(text: object) -> str:
    """A dynamic string for rich: control characters visible (it may hold the server's bytes), markup
    escaped (it may hold brackets). Every string printed here that labctl did not write goes through it."""
    return escape(printable(str(text)))


class LabctlGroup(click.Group):
    """Turns LabctlError into one red line and its exit code (2, or 3 for the infrastructure's), SIGTERM into a
    clean Ctrl-C, and labctl's own bugs into two lines and exit 3 (an infrastructure failure: nobody's submission
    is at fault), the traceback in a file."""

    def invoke(self, ctx: click.Context):
        stop_on_interrupts()
        exit_with_parent()
        try:
            return super().invoke(ctx)
        except LabctlError as error:
            err.print(f"[bold red]error:[/] {e(str(error))}", highlight=False, soft_wrap=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as error:  # a bug of labctl's: say so, keep the traceback, do not grade
            saved = _save_traceback()
            err.print(f"[bold red]labctl failed:[/] {e(type(error).__name__)}: {e(str(error)[:500])}\n"
                      f"This is a bug in labctl, not in what it ran; the traceback is in {e(saved)}.",
                      highlight=False, soft_wrap=True)
            sys.exit(EXIT_INFRASTRUCTURE)


def _save_traceback() -> str:
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="labctl-crash-", suffix=".txt", delete=False) as handle:
        handle.write(traceback.format_exc())
    return handle.name


def quiet() -> bool:
    """--quiet: only the summary and the reports, no progress (CI logs)."""
    context = click.get_current_context(silent=True)
    return bool(context and (context.find_root().obj or {}).get("quiet"))


def say_line(text: str) -> None:
    """A progress line on stderr (a check's result, a submission graded), unless --quiet."""
    if not quiet():
        err.print(text, highlight=False)


@contextlib.contextmanager
def progress_display(title: str) -> Iterator:
    """A spinner with the current step on a terminal; plain lines with elapsed seconds elsewhere (CI logs);
    nothing with --quiet."""
    started = time.monotonic()
    if quiet():
        yield lambda message: None
    elif err.is_terminal:
        with err.status(title) as status:
            def say(message: str) -> None:
                status.update(f"{title}: {e(message)}")
                if message.startswith(("built", "base:", "network", "the server", "removing", "impaired")):
                    err.print(f"  {e(message)}", highlight=False)
            yield say
    else:
        def say(message: str) -> None:
            err.print(f"{title} {time.monotonic() - started:5.1f}s: {e(message)}", highlight=False, soft_wrap=True)
        yield say


def project(ctx: click.Context) -> Project:
    """The command's project, found and loaded on first use, then the same object."""
    root = ctx.find_root()
    if "loaded" not in root.obj:
        root.obj["loaded"] = Project(find_root(root.obj["project_dir"]), backend_name=root.obj["backend"])
    return root.obj["loaded"]


@click.group(cls=LabctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--project", "project_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The labctl project (folder with lab.yaml). Default: found from the current folder up.")
@click.option("-q", "--quiet", is_flag=True, help="Only the summary and the reports, no progress (for CI logs).")
@click.option("--backend", "backend_name", type=click.Choice(["docker", "local"]), default=None,
              help="Where the lab's nodes run: docker (containers on the Docker Engine) or local (processes on "
                   "this host, no engine: inside Gradescope or PrairieLearn). Default: $LABCTL_BACKEND, else docker.")
@click.version_option(__version__, prog_name="labctl")
@click.pass_context
def main(ctx: click.Context, project_dir: Path | None, quiet: bool, backend_name: str | None) -> None:
    """labctl: a containerized network lab for learning how servers wait for requests.

    Start a lab (a server, a client, an injector and an observer on their own virtual
    network), look inside it, and grade blocking, threaded and polling servers.
    """
    ctx.ensure_object(dict)
    ctx.obj["project_dir"] = project_dir
    ctx.obj["quiet"] = quiet
    ctx.obj["backend"] = backends.chosen(backend_name)


# -- images -------------------------------------------------------------------------------------------

@main.group()
def images() -> None:
    """Build and list labctl's container images."""


@images.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when an image with the same content exists.")
@click.option("--base", type=click.Choice(["auto", "pull", "bootstrap"]), default="auto", show_default=True,
              help="Where the Debian base comes from: a registry, debootstrap offline, or pull-else-bootstrap.")
@click.option("--exercise", default=None, shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete),
              help="Only the images this exercise's grading runs on, with their parents (a CI job).")
@click.pass_context
def images_build(ctx: click.Context, force: bool, base: str, exercise: str | None) -> None:
    """Build the images from images/ (reused at once when unchanged)."""
    from labctl.grading import grading_images

    proj = project(ctx)
    names, extra = grading_images(proj.exercise(exercise)) if exercise else (None, None)
    with progress_display("images") as say:
        builder = proj.image_builder(say, extra)
        builder.base_path = base if base != "auto" else builder.base_path
        todo = builder.missing(names)
        tags = builder.ensure(names, force=force)
    for name, tag in tags.items():
        state = "built" if force or name in todo else "up to date"
        out.print(f"{tag:40} {state}", highlight=False)


@images.command("list")
@click.pass_context
def images_list(ctx: click.Context) -> None:
    """Show each image's tag and whether it exists on the engine."""
    builder = project(ctx).image_builder()
    for tag in builder.tags.values():
        out.print(f"{tag:40} {'present' if builder.exists(tag) else 'missing'}", highlight=False)


@images.command("tags")
@click.argument("exercises", nargs=-1, shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete))
@click.option("--json", "as_json", is_flag=True, help="A JSON object: image name -> tag.")
@click.pass_context
def images_tags(ctx: click.Context, exercises: tuple[str, ...], as_json: bool) -> None:
    """The tags the gradings of EXERCISES (default: every exercise) run on, with their parents, one a line.

    Content hashes of images/, computed without an engine: a CI job's image cache key.
    """
    from labctl.ci_templates import grading_tags

    tags = grading_tags(project(ctx), list(exercises))
    click.echo(json.dumps(tags, indent=2) if as_json else "\n".join(tags.values()))


# -- ci -----------------------------------------------------------------------------------------------

@main.group()
def ci() -> None:
    """Write the CI configuration that grades a student repository (GitHub Actions, GitLab CI)."""


def _ci_command(name: str, where: str):
    """`labctl ci NAME`: the same options for every platform, one template each."""
    @ci.command(name, help=f"Write {where} that runs EXERCISE's public checks (default: every exercise's, "
                           "one job each) on every push, with the reports as artifacts.")
    @click.argument("exercise", required=False, shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete))
    @click.option("-o", "--output", default=None, metavar="PATH",
                  help="Where to write it ('-' prints it). Default: its place in the project's root.")
    @click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
    @click.option("--submission", default=None, metavar="PATH",
                  help="Where the student's server is, {exercise} for the exercise's id. "
                       "Default: exercises/{exercise}/starter (the starter, edited in place).")
    @click.pass_context
    def command(ctx: click.Context, exercise: str | None, output: str | None, force: bool,
                submission: str | None) -> None:
        from labctl import ci_templates

        proj = project(ctx)
        platform = ci_templates.PLATFORMS[name]
        text = ci_templates.render(platform, ci_templates.chosen_exercises(proj, exercise),
                                   submission or ci_templates.DEFAULT_SUBMISSION)
        target = ci_templates.target_path(proj, platform, output)
        if target is None:
            click.echo(text, nl=False)
            return
        ci_templates.write(text, target, force)
        out.print(f"wrote {e(str(target))}: commit it to the student repository", highlight=False)
    return command


_ci_command("github", "a GitHub Actions workflow (.github/workflows/labctl.yml)")
_ci_command("gitlab", "a GitLab CI configuration (.gitlab-ci.yml, on a docker:dind service)")


# -- package ------------------------------------------------------------------------------------------

@main.group()
def package() -> None:
    """Package an exercise's grader for a grading platform (Gradescope, PrairieLearn): the local backend inside."""


@package.command("gradescope")
@click.argument("exercise", shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("autograder.zip"), show_default=True,
              help="The zip to write (upload it as the assignment's autograder).")
@click.option("--force", is_flag=True, help="Replace the zip if it exists.")
@click.pass_context
def package_gradescope(ctx: click.Context, exercise: str, output: Path, force: bool) -> None:
    """Write a Gradescope autograder zip grading EXERCISE (all checks, hidden ones after publishing)."""
    from labctl import package as packaging

    written = packaging.gradescope(project(ctx), exercise, output, force)
    out.print(f"wrote {e(str(written.path))}: upload it in the assignment's Configure Autograder page "
              "(Ubuntu base image)", highlight=False)


@package.command("prairielearn")
@click.argument("exercise", shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The folder to write (new or empty).")
@click.option("--image", default=None, help="The image name info.json names (default: labctl-grader-EXERCISE:VERSION).")
@click.option("--base-image", default=None, help="The Dockerfile's FROM: a Debian-based image with python3 "
                                                 "(default: python:3.12-slim-bookworm).")
@click.option("--force", is_flag=True, help="Replace the folder's contents if it is not empty.")
@click.pass_context
def package_prairielearn(ctx: click.Context, exercise: str, output: Path, image: str | None, base_image: str | None,
                         force: bool) -> None:
    """Write a PrairieLearn external grader for EXERCISE: Dockerfile, entrypoint, info.json.snippet, README.md."""
    from labctl import package as packaging

    written = packaging.prairielearn(project(ctx), exercise, output, image,
                                     base_image or packaging.DEFAULT_BASE_IMAGE, force)
    out.print(f"wrote {e(str(written.path))}: build and push {e(written.image)}, then merge info.json.snippet "
              f"(timeout {written.timeout} s) into the question's info.json ({e(str(written.path))}/README.md)",
              highlight=False)


# -- doctor -------------------------------------------------------------------------------------------

@main.command()
@click.pass_context
def doctor(ctx) -> None:
    """Is this machine ready to grade? The engine, its API, cgroups, storage, the open-files ceiling,
    the images (or how they would be built), free disk: each OK, a warning or an error, with the fix.

    Exit 0 when a grading can run here, 2 when not.
    """
    from labctl import doctor as checkup

    try:
        proj = project(ctx)
    except LabctlError:
        proj = None  # outside a project: the machine alone
    with progress_display("doctor") as say:
        say("asking the engine")
        findings = checkup.judge(checkup.gather(proj))
    marks = {"ok": "[green]OK[/]", "warning": "[yellow]warning[/]", "error": "[bold red]error[/]"}
    table = Table(box=None, padding=(0, 2), show_header=False)
    for finding in findings:
        table.add_row(marks[finding.level], e(finding.name), e(finding.detail))
        if finding.fix and finding.level != "ok":
            table.add_row("", "", f"[dim]fix: {e(finding.fix)}[/]")
    out.print(table)
    if checkup.ready(findings):
        out.print("[green]ready: gradings can run here[/]")
    else:
        out.print("[bold red]not ready:[/] fix the errors above")
        sys.exit(2)


# -- schema -------------------------------------------------------------------------------------------

@main.command()
@click.argument("kind", type=click.Choice(["lab", "exercise"]), default="lab")
def schema(kind: str) -> None:
    """Print the JSON Schema of lab.yaml or exercise.yaml (for editors: completion and checking).

    The same schemas are in labctl/schemas/, where the YAML files' first lines point editors.
    """
    if kind == "lab":
        from labctl.spec import lab_json_schema

        click.echo(json.dumps(lab_json_schema(), indent=2))
    else:
        from labctl.checks import load_catalog
        from labctl.exercise import exercise_json_schema

        load_catalog()
        click.echo(json.dumps(exercise_json_schema(), indent=2))


# -- lifecycle ----------------------------------------------------------------------------------------

@main.command()
@click.option("--submission", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with the server to run (copied to /submission). Without it the server node idles.")
@click.option("--run", "run_command", default="python3 server.py", show_default=True,
              help="How to start the submission, run in /submission as the unprivileged user.")
@click.option("--build", "build_command", default=None, help="A build step run before --run (e.g. make).")
@click.option("--port", type=int, default=None, help="The port the server listens on (default: lab.yaml's).")
@click.option("--docroot", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Files to serve, copied to /srv/www.")
@click.option("--exercise", default=None, shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete),
              help="Take --run, --build, --port, --docroot and the server image from this exercise.")
@click.option("--name", "lab_name", default=None, help="The lab's id (default: a new unique one).")
@click.option("--no-wait", is_flag=True, help="Do not wait for the server to listen.")
@click.pass_context
def up(ctx, submission, run_command, build_command, port, docroot, exercise, lab_name, no_wait) -> None:
    """Start a lab: network, containers, code copied in; wait until the server listens.

    labctl up --exercise polling --submission my_server/   runs your server as grading would.
    """
    from labctl.grading import with_server_image
    from labctl.lab import Lab, Submission

    proj = project(ctx)
    spec = proj.spec
    extra: dict[str, Path] = {}
    sub: Submission | None = None
    if exercise:
        loaded = proj.exercise(exercise)
        image, extra = loaded.server_image()
        spec = with_server_image(spec, image)
        if submission:  # the exercise's run and build; --port and --docroot when given
            sub = Submission.for_exercise(loaded, submission)
            sub = dataclasses.replace(sub, port=port or sub.port, docroot=docroot or sub.docroot)
    elif submission:
        sub = Submission(path=submission, run=run_command, build=build_command, docroot=docroot,
                         port=port or spec.server_port)
    with progress_display("up") as say:
        tags = proj.ensure_images(say, names=sorted({node.image for node in spec.nodes.values()}), extra=extra)
        lab = Lab.create(spec, proj.backend, lab_name)
        lab.up(tags, sub, progress=say, wait=not no_wait)
    out.print(f"lab [bold]{e(lab.id)}[/] is up", highlight=False)
    _print_lab(lab.containers())
    out.print(f"next: labctl exec client -- python3 -c \"...\"   labctl shell server   labctl down {lab.id}",
              highlight=False)


@main.command()
@click.option("--any-owner", is_flag=True, help="Show every user's labs, not only yours.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx, any_owner: bool, as_json: bool) -> None:
    """List running labs and their containers."""
    from labctl.lab import current_owner, list_labs

    labs = list_labs(project(ctx).backend, None if any_owner else current_owner())
    if as_json:
        click.echo(json.dumps([{"id": s.id, "owner": s.owner, "created": s.created, "subnet": s.subnet,
                                "containers": [{"node": c.node, "role": c.role, "name": c.name, "status": c.status,
                                                "exit_code": c.exit_code, "address": c.address}
                                               for c in s.containers]} for s in labs], indent=2))
        return
    if not labs:
        out.print("no labs running")
        return
    for summary in labs:
        out.print(f"lab [bold]{e(summary.id)}[/]  owner {e(summary.owner)}  subnet {summary.subnet}  "
                  f"created {summary.created}", highlight=False)
        _print_lab(summary.containers)


def _print_lab(containers) -> None:
    table = Table(box=None, padding=(0, 2))
    for column in ("node", "role", "status", "address", "container"):
        table.add_column(column)
    for info in containers:
        state = info.status + (f" ({info.exit_code})" if info.exit_code is not None else "")
        table.add_row(info.node, info.role, state, info.address or "-", info.name)
    out.print(table)


def _lab(ctx: click.Context, lab_id: str | None):
    from labctl.lab import find_lab

    proj = project(ctx)
    return find_lab(proj.spec, proj.backend, lab_id)


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.option("--lab", "lab_id", default=None, help="Which lab (default: your only running lab).")
@click.option("--timeout", type=float, default=None, help="Kill the command after this many seconds.")
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_(ctx, lab_id, timeout, node, command) -> None:
    """Run COMMAND in NODE and exit with its exit code:  labctl exec client -- ping -c1 server"""
    lab = _lab(ctx, lab_id)
    result = lab.exec(node, list(command), timeout=timeout)
    sys.stdout.buffer.write(result.stdout)
    sys.stderr.buffer.write(result.stderr)
    if result.timed_out:
        err.print(f"[yellow]the command was stopped after {timeout or lab.spec.timeouts.exec:g} s[/]")
    sys.exit(result.exit_code)


@main.command()
@click.option("--lab", "lab_id", default=None, help="Which lab (default: your only running lab).")
@click.option("--user", default=None, help="Run the shell as this user (default: the node's).")
@click.argument("node")
@click.pass_context
def shell(ctx, lab_id, user, node) -> None:
    """Open an interactive shell in NODE."""
    lab = _lab(ctx, lab_id)
    lab._node(node)
    sys.exit(lab.backend.interactive(lab.container_name(node), ["/bin/bash"], user=user))


@main.command()
@click.option("--lab", "lab_id", default=None, help="Which lab (default: your only running lab).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("--tail", default="all", help="Only the last N lines.")
@click.option("--raw", is_flag=True, help="The bytes as the node wrote them, escape sequences and all "
                                          "(by default control characters are shown as \\xNN).")
@click.argument("node", required=False)
@click.pass_context
def logs(ctx, lab_id, follow, tail, raw, node) -> None:
    """Print the log (stdout and stderr) of NODE, by default the server."""
    lab = _lab(ctx, lab_id)
    node = node or lab.spec.server.name
    tail_value = int(tail) if str(tail).isascii() and str(tail).isdigit() else "all"
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        for chunk in lab.logs(node, tail=tail_value, follow=follow):
            if raw:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            else:
                sys.stdout.write(printable(decoder.decode(chunk)))
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--lab", "lab_id", default=None, help="Which lab (default: your only running lab).")
@click.option("--watch", "interval", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="Look again every SECONDS until Ctrl-C (or --count looks).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many looks (default: one without --watch, until Ctrl-C with it).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per look, one a line (NDJSON): each thread's state, syscall, wait and CPU % "
                   "since the previous look.")
@click.pass_context
def observe(ctx, lab_id, interval, count, as_json) -> None:
    """Show the server's threads as the observer sees them: state, the syscall each sleeps in,
    what it waits on, its CPU % since the previous look (the first look is measured against one
    taken a second, or --watch SECONDS, before it), CPU ticks, context switches. Start a few
    clients and watch them wake up."""
    from labctl import observe as observer

    lab = _lab(ctx, lab_id)
    observers = lab.spec.nodes_by_role("observer")
    if not observers:
        raise LabctlError("lab.yaml has no observer node: nothing can look at the server's threads")
    try:
        for previous, current, at in observer.refreshes(lab, observers[0].name, interval, count):
            if as_json:
                click.echo(json.dumps(observer.refresh_json(previous, current, at), separators=(",", ":")))
                continue
            if interval and out.is_terminal:
                out.clear()
            out.print(observer.render(current, previous), highlight=False, soft_wrap=True, markup=False)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--lab", "lab_id", default=None, help="Which lab (default: your only running lab).")
@click.option("--node", default="client", show_default=True, help="Where to listen (client or injector).")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="How long to capture.")
@click.option("--filter", "packet_filter", default=f"tcp port {DEFAULT_PORT}", show_default=True,
              help="A tcpdump filter ('' for every packet).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("capture.pcap"),
              show_default=True, help="Where to write the pcap file (open it with Wireshark or tcpdump -r).")
@click.pass_context
def capture(ctx, lab_id, node, seconds, packet_filter, output) -> None:
    """Capture the lab's packets for a while (make requests meanwhile) into a pcap file."""
    lab = _lab(ctx, lab_id)
    with progress_display("capture") as say:
        say(f"listening on {node} for {seconds:g} s ({packet_filter or 'every packet'})")
        data, packets = lab.capture(node, seconds, packet_filter)
    output.write_bytes(data)
    out.print(f"{e(str(output))}: {packets} packets (read it with Wireshark, or: tcpdump -r {output})", highlight=False)


@main.command()
@click.option("--lab", "lab_id", default=None, help="Which lab (default: your only running lab).")
@click.option("--delay", metavar="TIME", default=None,
              help="Delay every packet from the server by this much, so every round trip: 100ms, 1.5s, 500us.")
@click.option("--jitter", metavar="TIME", default=None,
              help="Vary each packet's delay by up to this much either way (needs --delay, at most it): 10ms.")
@click.option("--loss", metavar="SHARE", default=None, help="Lose this share of the server's packets at random: 1%, 0.5%.")
@click.option("--rate", metavar="RATE", default=None,
              help="Limit the server's packets to this many bits per second: 1mbit, 500kbit.")
@click.option("--clear", is_flag=True, help="Remove every impairment of NODE.")
@click.argument("node")
@click.pass_context
def impair(ctx, lab_id, delay, jitter, loss, rate, clear, node) -> None:
    """Impair NODE's path to the server (a client or the injector): delay, jitter, loss, rate.

    \b
    labctl impair client --delay 100ms --loss 1%   set exactly these (what was set before goes)
    labctl impair client                           what is set, and how
    labctl impair client --clear                   nothing any more

    They act on the server's packets as NODE receives them, made in NODE (never on the server): with tc
    netem where the kernel has it; else delay and jitter hold each packet in user space (NFQUEUE), loss
    drops a random share (iptables statistic), rate shapes (tc htb). Each line says which was used.
    """
    from labctl import impair as impairing
    from labctl.impairment import from_options

    values = {"delay": delay, "jitter": jitter, "loss": loss, "rate": rate}
    if clear and any(value is not None for value in values.values()):
        raise LabctlError("--clear removes every impairment: give it alone, or set new ones without it")
    lab = _lab(ctx, lab_id)
    if clear:
        state = impairing.clear_impairment(lab, node)
        removed = state.facts.get("removed") or []
        out.print(f"{e(node)}: cleared" + (f" ({e(', '.join(removed))})" if removed else " (nothing was set)"),
                  highlight=False)
        return
    if any(value is not None for value in values.values()):
        state = impairing.set_impairment(lab, node, from_options(**values))
    else:
        state = impairing.show_impairment(lab, node)
    out.print(e(state.summary()), highlight=False)
    for line in state.lines():
        out.print(f"  {e(line)}", highlight=False)
    for problem in state.problems:
        out.print(f"  [yellow]warning:[/] {e(problem)}", highlight=False)


@main.command()
@click.option("--lab", "lab_id", default=None, help="Which lab (default: your only running lab).")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="one", show_default=True,
              help="What the client does meanwhile: one request; a slow client that sends its request in pieces with "
                   "pauses; several clients at once.")
@click.option("--clients", type=click.IntRange(1, 32), default=4, show_default=True,
              help="concurrent: how many clients at once.")
@click.option("--pieces", type=click.IntRange(2, 20), default=4, show_default=True,
              help="slow-client: how many pieces the request is sent in.")
@click.option("--pause", type=click.FloatRange(0.0, 2.0), default=0.25, show_default=True,
              help="slow-client: seconds between two pieces.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("trace.html"),
              show_default=True, help="The HTML page to write: the timeline drawn as SVG, self-contained (opens offline).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Also write the trace as JSON to this file ('-': print the JSON instead of the terminal view).")
@click.option("--load-curve", "with_load", is_flag=True,
              help="After the trace, measure the load curve (load_curve's steps of 1 to 256 clients: latency, "
                   "throughput, threads, CPU) and draw it on the page (and in the JSON).")
@click.pass_context
def trace(ctx, lab_id, scenario, clients, pieces, pause, output, json_path, with_load) -> None:
    """Trace the server's threads while the client plays a scenario: strace in the observer, the packets
    captured in the client, on one clock.

    Shows per thread what it waited in and when it woke, per packet the syscall return it caused and
    how long after (e.g. accept4 returned 38 µs after the handshake's ACK), in the terminal, as an HTML page
    and as JSON. Needs a lab started with a submission (labctl up --exercise ... --submission ...).
    Tracing slows the server's every syscall: grading never does it.
    """
    from labctl.trace import page, record, terminal, timeline

    record.refuse_without_features(project(ctx).backend)
    lab = _lab(ctx, lab_id)
    with progress_display("trace") as say:
        recording = record.record(lab, scenario, clients=clients, pieces=pieces, pause=pause, progress=say)
        load = None
        if with_load:
            from labctl.trace.load import measure

            say("the load curve: 1 to 256 clients at once, a few seconds each")
            load = measure(lab)
    built = timeline.build(recording.strace, recording.scenario)
    page.write(built, output, load)
    document = built.to_json()
    if load is not None:
        document["load_curve"] = load.to_json()
    data = json.dumps(document, indent=1)
    if json_path == "-":
        click.echo(data)
    else:
        if json_path:
            Path(json_path).write_text(data + "\n", encoding="utf-8")
        out.print(terminal.renderable(built))
        if load is not None:
            out.print(f"under load: {'would pass' if load.passed else 'would fail'} load_curve: {e(load.verdict)}",
                      highlight=False)
    written = f"{output}" + (f" and {json_path}" if json_path and json_path != "-" else "")
    err.print(f"wrote {e(written)}", highlight=False)


@main.command()
@click.argument("lab_id", required=False)
@click.option("--all", "all_labs", is_flag=True, help="Remove all your labs, also ones orphaned by a killed labctl.")
@click.option("--any-owner", is_flag=True, help="With --all: every user's labs on this engine.")
@click.pass_context
def down(ctx, lab_id, all_labs, any_owner) -> None:
    """Remove a lab (containers and network). Safe to repeat."""
    from labctl.lab import Lab, labs_to_remove

    proj = project(ctx)
    ids = labs_to_remove(proj.backend, lab_id, every=all_labs, any_owner=any_owner)
    if not ids:
        out.print("nothing to remove")
        return
    for one in ids:
        removed = Lab(proj.spec, proj.backend, one).down()
        out.print(f"lab {one}: removed {removed} object(s)" if removed else f"lab {one}: already gone",
                  highlight=False)



# -- grading ------------------------------------------------------------------------------------------

def _exercise_ids(incomplete: str) -> list[str]:
    """The project's exercise ids that start with what was typed (shell completion)."""
    try:
        return [name for name in Project(find_root(None)).exercise_ids() if name.startswith(incomplete)]
    except LabctlError:
        return []


def _run_grading(ctx: click.Context, exercise_name: str, submission: Path, include_hidden: bool,
                 only: tuple[str, ...], reports: tuple[str, ...], student_view: bool,
                 evidence: Path | None = None) -> None:
    from labctl.evidence.folder import EvidenceFolder
    from labctl.grading import GradeOptions, grade
    from labctl.report import parse_specs, write_reports
    from labctl.results import HIDDEN_NAME

    proj = project(ctx)
    exercise = proj.exercise(exercise_name)
    options = GradeOptions(include_hidden=include_hidden, only=list(only) or None, student_view=student_view,
                           evidence=evidence)
    options.checks_of(exercise)  # --only's names are checked before a lab is made
    if evidence is not None:
        EvidenceFolder.prepare(evidence)  # and the evidence folder
    shown = "all checks" if include_hidden else "public checks"
    say_line(f"[bold]{e(exercise.id)}[/]: {e(exercise.title)} — {shown} on {e(str(submission))}")

    def on_result(result) -> None:
        mark = "[green]pass[/]" if result.passed else ("[yellow]time[/]" if result.status == "timed_out"
                                                       else "[red]FAIL[/]")
        name = HIDDEN_NAME if student_view and result.visibility == "hidden" else result.name
        say_line(f"  {mark} {e(name):28} {result.points:g}/{result.max_points:g}  {result.duration:5.1f}s")

    with progress_display("grading") as say:
        report = grade(proj, exercise, submission, options, progress=say, on_result=on_result)
    report = report.for_students() if student_view else report
    specs = list(reports) or ["terminal"]
    write_reports(report, specs, out)
    on_console = any(item.renderer.name == "terminal" and item.target is None for item in parse_specs(specs))
    if not report.gradable and not on_console:
        # The terminal report says why in its footer; without it the reason still reaches the console, once.
        what = "not graded, infrastructure failure" if report.infrastructure_failed else "not gradable"
        err.print(f"[bold red]{what}:[/] {e(report.error or '')}", highlight=False)
    sys.exit(report.exit_code)


_submission_option = click.option(
    "--submission", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="The folder with the server to grade (copied into the server container).")
_only_option = click.option("--only", multiple=True, metavar="CHECK", help="Run only this check (repeatable).")
_report_option = click.option(
    "--report", "reports", multiple=True, metavar="FORMAT[:PATH]",
    help="Write a report: terminal, json, junit, gradescope, prairielearn, github, classroom (repeatable; "
         "default: terminal).")
_evidence_option = click.option(
    "--evidence", type=click.Path(path_type=Path), default=None, metavar="DIR",
    help="Keep what proves each failed check in DIR (new, empty, or filled by an earlier --evidence): a picture "
         "of the server's threads at every look a process check judged (PNG, and the looks as JSON), the packets "
         "of a network check (a pcap of its first packets) and a timing table of its connections. At most 2 MiB a "
         "file and 16 MiB a grading; nothing for a check that passed. Reports point at the files, Gradescope and "
         "PrairieLearn show the pictures. Verdicts are the same with or without it.")


@main.command()
@click.argument("exercise", shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete))
@click.option("--submission", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default="the current folder", help="The folder with your server.")
@_only_option
@_report_option
@_evidence_option
@click.pass_context
def test(ctx, exercise, submission, only, reports, evidence) -> None:
    """Run an exercise's public checks on your server, with explanations.

    Exit 0: every check passed; 1: some failed; 2: could not grade your server (the message says
    why); 3: the grading machine failed, not your server.
    """
    _run_grading(ctx, exercise, submission, include_hidden=False, only=only, reports=reports, student_view=True,
                 evidence=evidence)


@main.command()
@click.argument("exercise", shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete))
@_submission_option
@_only_option
@_report_option
@click.option("--student-view", is_flag=True,
              help="Every check runs and counts, but no report or progress line names a hidden check or shows "
                   "its message or evidence: one line sums them (\"hidden checks: 6/10 points (3 checks)\"). "
                   "For reports a student reads (their repository's CI); --evidence then keeps nothing of a "
                   "hidden check.")
@_evidence_option
@click.pass_context
def grade(ctx, exercise, submission, only, reports, student_view, evidence) -> None:
    """Grade a submission with all checks, public and hidden; write reports for CI and graders.

    \b
    Exit 0: every check passed; 1: graded with failures;
    2: not gradable: bad input, or the submission (its server never started or never
       listened, it is over a limit, its folder is missing);
    3: an infrastructure failure (the engine unreachable, an image that would not build,
       labctl's own bug): nobody's submission is at fault; grade it again once fixed.
    Always with a clear message; reports say which (`failure` in the json report).
    """
    _run_grading(ctx, exercise, submission, include_hidden=True, only=only, reports=reports,
                 student_view=student_view, evidence=evidence)


# -- a class at once ---------------------------------------------------------------------------------

@main.command()
@click.argument("exercise", shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete))
@click.argument("submissions", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=None,
              help="Gradings at once, each on its own lab. Default: one per core, fewer when the free memory "
                   "would not hold that many labs at lab.yaml's limits (the figure and why are said).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Where results go (DIR/<id>/, DIR/gradebook.csv, DIR/index.html). "
                   "Default: beside SUBMISSIONS, named SUBMISSIONS-EXERCISE.")
@click.option("--report", "reports", multiple=True, type=click.Choice(list(REPORT_FILES)),
              help="Also keep this report for each student (repeatable); json (report.json) is always kept.")
@click.option("--force", is_flag=True, help="Grade every student again, also those unchanged since their last grading.")
@click.option("--regrade", multiple=True, metavar="ID",
              help="Grade this student again even if unchanged (repeatable; an id or the entry's name).")
@click.option("--farm", metavar="URL", default=None,
              help="Grade on a grading farm: its scheduler's address (tcp://HOST:8786), every worker running "
                   "`labctl worker`. The results come into the same folder.")
@click.pass_context
def batch(ctx, exercise, submissions, jobs, out_dir, reports, force, regrade, farm) -> None:
    """Grade a whole class: SUBMISSIONS holds one entry per student (a folder, a .zip or a .tar.gz, named
    after the student), graded with all checks, several labs at once.

    \b
    Per student DIR/<id>/ (report.json, the --report formats, grading.log, job.json), and
    DIR/gradebook.csv (id, score, max, status, duration, each check's points, message),
    rewritten after every result; DIR/index.html, the class page, at the end.
    Run it again to resume: a student whose submission and exercise are unchanged is not
    graded again (--force, --regrade ID). Ctrl-C stops the gradings running, removes their
    labs and keeps every result that finished.
    Exit 0 when every entry got a row (graded, not gradable or error; students failing
    checks is no failure of the batch), 2 for bad input, 130 after Ctrl-C.
    """
    from labctl.batch import progress, runner
    from labctl.batch.job import exercise_fingerprint

    proj = project(ctx)
    loaded = proj.exercise(exercise)
    out_dir = out_dir or runner.default_out(submissions, loaded)
    runner.check_folders(submissions, out_dir)
    runner.list_class(submissions, frozenset(regrade))  # bad input said before any image is built
    fingerprint = exercise_fingerprint(proj, runner.exercise_reference(proj, loaded))
    options = runner.BatchOptions(out_dir, fingerprint, tuple(dict.fromkeys(("json", *reports))), force,
                                  frozenset(regrade))
    with progress_display("batch") as say:
        executor, how = runner.open_executor(proj, loaded, fingerprint, jobs, farm, say)
    say_line(f"[bold]{e(loaded.id)}[/]: {e(loaded.title)} — {e(how)}")
    display = progress.BatchDisplay(err, "quiet" if quiet() else "live" if err.is_terminal else "lines")
    try:
        outcome = runner.run_batch(proj, loaded, submissions, executor, options, display)
    finally:
        display.close()
    _print_batch(outcome, getattr(executor, "removed_labs", 0), force or bool(regrade))
    sys.exit(130 if outcome.interrupted else 0)


def _print_batch(outcome, removed_labs: int, forced: bool) -> None:
    """The batch's summary: counts per status, where the gradebook and the page are, what is left."""
    counts = outcome.counts
    kept = sum(1 for row in outcome.rows.values() if row.how == "unchanged")
    out.print(f"{len(outcome.plan.entries)} entries: {counts['graded']} graded ({outcome.graded_now} in this run, "
              f"{kept} unchanged), {counts['not gradable']} not gradable, {counts['error']} errors"
              + (f", {len(outcome.left)} not graded yet" if outcome.left else ""), highlight=False)
    out.print(f"gradebook: {e(outcome.gradebook)}", highlight=False)
    out.print(f"class page: {e(outcome.page)}" if outcome.page else f"[yellow]{e(outcome.page_note)}[/]", highlight=False)
    if removed_labs:
        out.print(f"removed {removed_labs} lab(s) that stopped gradings left behind", highlight=False)
    if counts["error"]:
        out.print(f"[yellow]{counts['error']} error(s)[/]: the machine's, not the students' (their messages are in "
                  "the gradebook); the same command grades them again", highlight=False)
    if outcome.interrupted:
        standing = sum(1 for student in outcome.left if student in outcome.plan.standing)
        out.print(f"[yellow]interrupted:[/] every result that finished is kept; {len(outcome.left)} left to grade"
                  + (f" ({standing} keep their result of before in the gradebook meanwhile)" if standing else "")
                  + ". Run the same command again to resume: finished students are not graded again"
                  + (" (leave out --force and --regrade, which grade them again)" if forced else "") + ".",
                  highlight=False)


# -- the grading farm ---------------------------------------------------------------------------------

@main.command()
@click.option("--scheduler", "scheduler", required=True, metavar="URL",
              help="The Dask scheduler of the farm (`dask scheduler` prints it: tcp://HOST:8786; tls://... with TLS).")
@click.option("--labs", type=click.IntRange(1, 64), default=None,
              help="Gradings at once on this host, each in its own lab (default: one per core, as many as the "
                   "memory holds, said at start).")
@click.option("--name", "worker_name", default=None,
              help="This worker's name on the farm, unique there (default: the host's name).")
@click.option("--exercise", "exercise_ids", multiple=True, metavar="ID",
              shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete),
              help="Grade only this exercise (repeatable; default: every exercise of the project).")
@click.pass_context
def worker(ctx, scheduler, labs, worker_name, exercise_ids) -> None:
    """Grade on a farm: a Dask worker on this Docker host that grades what `labctl batch --farm URL` sends.

    \b
    At start: checks the engine, removes labs orphaned by a worker of this host killed with its gradings,
    builds the images if missing (offline, as `labctl images build`), prints each exercise's fingerprint.
    It only takes jobs made with the same labctl and files. Ctrl-C or SIGTERM: leaves the scheduler (its
    gradings go to other workers), stops its gradings and removes their labs.
    """
    import socket

    from labctl.batch.runner import default_jobs
    from labctl.batch.worker import prepare, serve

    proj = project(ctx)

    def tell(message: str) -> None:
        err.print(e(message), highlight=False, soft_wrap=True)

    if labs is None:
        labs, why = default_jobs(proj.spec)
        tell(f"{labs} lab(s) at once, as `labctl batch` chooses ({why}); --labs sets it")
    name = worker_name or socket.gethostname()
    with progress_display("worker") as say:
        serving = prepare(proj, labs, name, list(exercise_ids), say)
    out.print(f"worker {e(name)}: {labs} lab(s) at once, labctl {__version__}", highlight=False)
    for exercise_id, fingerprint in serving.fingerprints.items():
        out.print(f"  {e(exercise_id):16} fingerprint {fingerprint}", highlight=False)
    reason = serve(serving, scheduler, tell)
    out.print(f"worker {e(name)} {e(reason)}", highlight=False)


# -- authoring ----------------------------------------------------------------------------------------

@main.command(name="list")
@click.pass_context
def list_(ctx) -> None:
    """The exercises: id, title, I/O model, points (public + hidden)."""
    table = Table(box=None, padding=(0, 2))
    for column in ("exercise", "title", "model", "checks", "points"):
        table.add_column(column)
    for exercise in project(ctx).exercises():
        public = sum(check.points for check in exercise.public_checks)
        hidden = sum(check.points for check in exercise.hidden_checks)
        table.add_row(e(exercise.id), e(exercise.title), exercise.model, str(len(exercise.checks)),
                      f"{public:g}" + (f" + {hidden:g} hidden" if hidden else ""))
    out.print(table)


@main.command()
@click.argument("exercises", nargs=-1, shell_complete=lambda ctx, param, incomplete: _exercise_ids(incomplete))
@click.option("--repeat", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Grade every submission this many times; a verdict that changes is a flip, and fails.")
@click.option("--parallel", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Gradings at once on the engine (each on its own lab): verdicts must hold on a busy machine.")
@click.pass_context
def validate(ctx, exercises, repeat, parallel) -> None:
    """Prove exercises grade right: the solution gets full marks, the starter does not, and
    every mutant fails exactly the checks it declares. Prints the matrix; exit 1 on any
    difference, or on any flip with --repeat. Without EXERCISES: every exercise."""
    from labctl.validate import validate_exercise

    proj = project(ctx)
    loaded = proj.exercises(exercises)  # every YAML is checked before anything runs
    failed = []
    flip_counts: dict[str, int] = {}
    for exercise in loaded:
        if exercise.validate is None:
            err.print(f"[yellow]{e(exercise.id)}: no validate section: nothing to prove[/]")
            continue
        count = (len(exercise.validate.mutants) + 2) * repeat
        say_line(f"[bold]{e(exercise.id)}[/]: {count} gradings, {parallel} at once")

        def on_row(row) -> None:
            mark = "[green]as expected[/]" if not row.problems else "[red]DIFFERS[/]"
            number = f" #{row.repeat + 1}" if repeat > 1 else ""
            say_line(f"  {e(row.label + number):32} {mark}  ({row.report.duration:.1f} s)")

        with progress_display("validate") as say:
            outcome = validate_exercise(proj, exercise, progress=say, on_row=on_row, repeat=repeat,
                                        parallel=parallel)
        _print_matrix(outcome)
        flip_counts[exercise.id] = len(outcome.flips)
        if not outcome.ok:
            failed.append(exercise.id)
    if repeat > 1:
        out.print("flips: " + ", ".join(f"{name} {count}" for name, count in flip_counts.items())
                  + f"  (--repeat {repeat} --parallel {parallel})", highlight=False)
    if failed:
        err.print(f"[bold red]validate failed:[/] {', '.join(failed)}")
        sys.exit(1)
    out.print("[green]every exercise grades as expected[/]")


def _print_matrix(outcome) -> None:
    """validate's matrix (labctl.validate.matrix), what differs in words, and the flips."""
    from labctl.validate import matrix

    shown = matrix(outcome)
    # The title on a line of its own: a table's title wraps to the table's width (it did, in CI logs).
    out.print(shown.title, highlight=False, markup=False, soft_wrap=True)
    table = Table(box=None, padding=(0, 1))
    table.add_column(e(shown.columns[0]), no_wrap=True)
    for column in shown.columns[1:]:
        table.add_column(e(column), justify="center", no_wrap=True)
    for row in shown.rows:
        table.add_row(*(_cell(cell) for cell in row))
    out.print(table)
    for line in shown.legend:
        out.print(line, highlight=False, markup=False)
    for label, problem in shown.problems:
        out.print(f"  [red]{e(label)}[/]: {e(problem)}", highlight=False)
    for flip in outcome.flips:
        out.print(f"  [red]flip[/] {e(str(flip))}", highlight=False)


def _cell(cell) -> str:
    return f"[red]{e(cell.text)}[/]" if cell.differs else f"[dim]{e(cell.text)}[/]" if cell.demonstration else e(cell.text)


@main.command()
@click.argument("name", required=False)
@click.option("--markdown", is_flag=True, help="The whole catalog as Markdown (as in exercises/README.md).")
def checks(name, markdown) -> None:
    """The check catalog: every check exercises can use, with its parameters."""
    from labctl import catalog_docs
    from labctl.checks import load_catalog

    catalog = load_catalog()
    if markdown:
        click.echo(catalog_docs.catalog_markdown(), nl=False)
        return
    if name:
        if name not in catalog:
            raise LabctlError(f"no check {name!r}; the catalog: {', '.join(catalog)}")
        definition = catalog[name]
        needs = f"; needs {', '.join(sorted(definition.needs))}" if definition.needs else ""
        needs += f"; --evidence keeps its {' and '.join(sorted(definition.proof))}" if definition.proof else ""
        out.print(f"[bold]{name}[/]: {e(definition.summary)}  (budget {definition.default_timeout:g} s{needs})",
                  highlight=False)
        table = Table(box=None, padding=(0, 2))
        for column in ("parameter", "type", "default", "meaning"):
            table.add_column(column, overflow="fold")
        for row in catalog_docs.parameters(definition.params):
            table.add_row(*(e(cell) for cell in row))
        out.print(table)
        return
    table = Table(box=None, padding=(0, 2))
    table.add_column("check")
    table.add_column("what it looks for", overflow="fold")
    for definition in catalog.values():
        table.add_row(definition.name, e(definition.summary))
    out.print(table)
    out.print("labctl checks NAME: its parameters", highlight=False)


@main.command()
@click.argument("exercise_id")
@click.option("--title", default=None, help="The exercise's title (default: from the id).")
@click.pass_context
def new(ctx, exercise_id, title) -> None:
    """Create exercises/EXERCISE_ID from a scaffold that validates out of the box."""
    from labctl.authoring import new_exercise

    folder = new_exercise(project(ctx).root, exercise_id, title)
    out.print(f"created {e(str(folder))}: edit exercise.yaml, README.md, solution/ and starter/, then "
              f"`labctl validate {exercise_id}`", highlight=False)


@main.command()
@click.option("--student", "target", type=click.Path(path_type=Path), required=True,
              help="The folder to write the handout into (new or empty).")
@click.pass_context
def export(ctx, target) -> None:
    """Write a student handout: no solutions, mutants or hidden checks; `labctl test` still works."""
    from labctl.authoring import export_student

    exported = export_student(project(ctx).root, target)
    out.print(f"handout in {e(str(target))}: {', '.join(exported)}", highlight=False)

if __name__ == "__main__":
    main()
