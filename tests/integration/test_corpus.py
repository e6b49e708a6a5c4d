"""The classifier on servers the project did not write: well-known servers from Debian's packages and
standard-library servers, in C, JavaScript, Python, Ruby and Perl, one for each I/O model, plus ordinary student
patterns (socket timeouts, a wake-up pipe, a pool made up front).

Each server runs in a lab on the corpus image (tests/corpus/image: labctl's server image and the
servers' Debian packages), with its configuration from tests/corpus/<name>/; the io_model check
classifies it three times, after different checks each time (nothing first; a file request, which
starts a runtime's I/O helpers; a burst of clients), and must find its real model every time.
"""

from __future__ import annotations

import time

import pytest
from conftest import ROOT

from labctl.checks import CheckContext, load_catalog
from labctl.grading import with_server_image

CORPUS = ROOT / "tests" / "corpus"
IMAGE = "corpus"

#: Servers of another protocol than HTTP: their held connections send nothing (memcached and redis
#: close a connection that looks like HTTP), and the new client asks in their own protocol.
OTHER_PROTOCOLS = {"memcached": {"request": "", "probe_request": "version\\r\\n"},
                   "redis": {"request": "", "probe_request": "PING\\r\\n"}}
#: name -> (how it runs, the model it really has)
SERVERS: dict[str, tuple[str, str]] = {
    "nginx": ("nginx -c /submission/nginx.conf -p /tmp -g 'daemon off;'", "event-loop-workers"),
    "apache-prefork": ("apache2 -f /submission/httpd.conf -DFOREGROUND", "prefork"),
    "apache-worker": ("apache2 -f /submission/httpd.conf -DFOREGROUND", "thread-pool"),
    "lighttpd": ("lighttpd -D -f /submission/lighttpd.conf", "event-loop"),
    "memcached": ("memcached -l 0.0.0.0 -p 8080 -U 0 -t 4 -c 1024", "event-loop-threads"),
    "redis": ("redis-server --port 8080 --bind 0.0.0.0 --protected-mode no --save '' --appendonly no --dir /tmp",
              "event-loop"),
    "busybox-httpd": ("busybox httpd -f -p 8080 -h /srv/www", "fork-per-connection"),
    "node-http": ("node server.js", "event-loop"),
    "python-http": ("python3 server.py", "blocking"),
    "python-threading": ("python3 server.py", "thread-per-connection"),
    "python-forking": ("python3 server.py", "fork-per-connection"),
    "python-settimeout": ("python3 server.py", "blocking"),
    "python-wakeup-pipe": ("python3 server.py", "thread-per-connection"),
    "python-pool": ("python3 server.py", "thread-pool"),
    "python-prefork": ("python3 server.py", "prefork"),
    "python-busy": ("python3 server.py", "busy-polling"),
    # socat forks a relay per client, its shell behind a socketpair: a unix socket is not a client.
    "socat": ("socat TCP-LISTEN:8080,fork,reuseaddr SYSTEM:\"sed -u '/^\\r\\$/q' >/dev/null; "
              "printf 'HTTP/1.0 200 OK\\r\\n\\r\\nhello\\n'\"", "fork-per-connection"),
    "ruby-webrick": ("ruby server.rb", "thread-per-connection"),
    "perl-daemon": ("perl server.pl", "blocking"),
}
#: What runs before each of the three classifications.
BEFORE: list[tuple[str, dict]] = [
    ("", {}),
    ("http", {"path": "/", "expect": {"status": None}}),
    ("concurrent_clients", {"clients": 8, "requests": 2, "path": "/", "max_errors": 16}),
]
FOUND: dict[str, list[str]] = {}  # name -> the models found, for the table printed at the end


@pytest.fixture(scope="module")
def corpus_images(project):
    images = project.ensure_images(names=[IMAGE, "tools"], extra={IMAGE: CORPUS / "image"})
    yield images
    print("\n| server | model | found (x3) |\n|---|---|---|")  # the table, for people (pytest -s)
    for name, found in FOUND.items():
        print(f"| {name} | {SERVERS[name][1]} | {' / '.join(found)} |")


def run(lab, name: str, **params):
    definition = load_catalog()[name]
    ctx = CheckContext(lab=lab, port=8080, deadline=time.monotonic() + 60, docroot=ROOT / "exercises" / "www")
    return definition.run(ctx, definition.params(**params))


@pytest.mark.parametrize("name", list(SERVERS))
def test_a_real_server_is_classified_as_its_real_model_three_times(name, project, corpus_images):
    from labctl.lab import Lab, Submission

    command, expected = SERVERS[name]
    lab = Lab.create(with_server_image(project.spec, IMAGE), project.backend)
    try:
        lab.up(corpus_images, Submission(path=CORPUS / name, run=command, docroot=ROOT / "exercises" / "www"))
        found = []
        for check, params in BEFORE:
            if check:
                run(lab, check, **params)
            outcome = run(lab, "io_model", expect=expected if expected != "busy-polling" else "blocking",
                          **OTHER_PROTOCOLS.get(name, {}))
            found.append(outcome.evidence["model"])
            print(f"{name} after {check or 'nothing'}: {outcome.evidence['model']}: {outcome.evidence['reason']}\n"
                  f"  rules: {outcome.evidence['rules']}")
        FOUND[name] = found
        assert found == [expected] * 3, f"{name}: expected {expected}, found {found}"
    finally:
        lab.down()
