"""Build labctl's images from images/, offline when no registry answers.

The images form a small tree:  base -> server -> server-c,  base -> tools.
Each tag carries a hash of everything that goes into the image (its folder, its
package group, its parent's hash), so an unchanged image is found and reused at once
and a changed Dockerfile or package list builds a new one.

The base image has two ways in, and both give the same image: Debian bookworm with the
`base` group of images/packages.txt:
- pull: `debian:bookworm-slim` from a registry (a user's machine with Docker Hub), then
  images/base/Dockerfile installs the packages;
- bootstrap: no registry answers (this project's CI), so the root file system is made
  with `debootstrap --include` of the same packages and imported with `docker import`
  as the base itself (images/base/Dockerfile's one job, installing them, is done).
The build reports which path it took. Images whose parents are ready build in parallel
(server and tools both stand on base), and each Dockerfile keeps to a step or two: a
step costs seconds on some storage drivers, and what only configures a container (its
user, folder, environment) is set by labctl when it creates one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from labctl.errors import ImageBuildError

#: Debian release and the registry image of it; the offline bootstrap makes the same.
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("LABCTL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
REGISTRY_ROOT = "debian:bookworm-slim"
BOOTSTRAP_TIMEOUT = 20 * 60  # seconds; it takes about one minute on a good connection
LABEL = "labctl.image"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImageDef:
    """One image of the tree: its folder, its parent, its package group."""

    name: str
    folder: Path
    parent: str | None              # None: the base, made from Debian itself
    packages: str | None = None     # the group of images/packages.txt it installs (its name, when one exists)


#: An image's name: also its tag's repository, labctl-<name>.
IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
#: A Dockerfile names its parent in the default of its BASE argument: `ARG BASE=labctl-server`.
_PARENT = re.compile(r"^\s*ARG\s+BASE\s*=\s*labctl-([a-z0-9-]+)\s*$", re.MULTILINE)


def discover(images_dir: Path, extra: dict[str, Path] | None = None) -> dict[str, ImageDef]:
    """Every image: each images/<name>/ folder with a Dockerfile, and the `extra` ones (an exercise's own
    image: name -> folder), parents before children.

    An image's parent is the one its Dockerfile names in `ARG BASE=labctl-<parent>` (else the base); it
    installs the packages.txt group of its own name, if there is one. A parent that does not exist, or a
    cycle, is an ImageBuildError naming the Dockerfile.
    """
    folders = {path.parent.name: path.parent for path in sorted(images_dir.glob("*/Dockerfile"))}
    folders.update(extra or {})
    groups = read_packages(images_dir)
    found: dict[str, ImageDef] = {}
    for name, folder in folders.items():
        if not IMAGE_NAME.fullmatch(name):
            raise ImageBuildError(f"{folder}: an image's name is lowercase letters, digits and '-', found {name!r}")
        if name == "base":
            found[name] = ImageDef(name, folder, None, "base")
            continue
        match = _PARENT.search((folder / "Dockerfile").read_text())
        found[name] = ImageDef(name, folder, match.group(1) if match else "base", name if name in groups else None)
    ordered: dict[str, ImageDef] = {}

    def place(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        image = found[name]
        if image.parent is not None:
            if image.parent not in found:
                raise ImageBuildError(f"{image.folder / 'Dockerfile'}: its parent labctl-{image.parent} (ARG BASE) is "
                                      f"no image here (images: {', '.join(sorted(found))})")
            if image.parent in path:
                raise ImageBuildError(f"{image.folder / 'Dockerfile'}: images that are each other's parents: "
                                      + " -> ".join((*path, name)))
            place(image.parent, (*path, name))
        ordered[name] = image

    if "base" not in found:
        raise ImageBuildError(f"{images_dir}/base/Dockerfile is missing: every image stands on labctl's base")
    for name in found:
        place(name, ())
    return ordered


def read_packages(images_dir: Path) -> dict[str, list[str]]:
    """Read images/packages.txt: `group package...` lines, `#` comments."""
    groups: dict[str, list[str]] = {}
    path = images_dir / "packages.txt"
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        group, *packages = line.split()
        if not packages:
            raise ImageBuildError(f"{path}:{number}: group {group!r} lists no packages")
        groups.setdefault(group, []).extend(packages)
    return groups


def _hash_folder(folder: Path, digest: hashlib._Hash) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")


def image_tags(images_dir: Path, extra: dict[str, Path] | None = None) -> dict[str, str]:
    """The tag of every image, e.g. {"server": "labctl-server:3f2a9c01b7de"}, from content alone: its
    folder, its package group and its parent's tag."""
    packages = read_packages(images_dir)
    tags: dict[str, str] = {}
    for image in discover(images_dir, extra).values():
        digest = hashlib.sha256()
        if image.parent:
            digest.update(tags[image.parent].encode())
        if image.packages:
            digest.update(" ".join(packages[image.packages]).encode())
        _hash_folder(image.folder, digest)
        tags[image.name] = f"labctl-{image.name}:{digest.hexdigest()[:12]}"
    return tags


def needed_tags(images_dir: Path, names: list[str], extra: dict[str, Path] | None = None) -> dict[str, str]:
    """The tags of the named images and of their parents, parents first: everything that must be on an engine
    before they run (a grading checks the parents too), so what a CI cache saves and loads. No engine is asked:
    a tag is content alone, so a CI job knows its cache key before Docker is even up."""
    images = discover(images_dir, extra)
    unknown = sorted(set(names) - set(images))
    if unknown:
        raise ImageBuildError(f"no image {', '.join(unknown)}: there is no {images_dir}/{unknown[0]}/Dockerfile "
                              f"(images: {', '.join(images)})")
    wanted: set[str] = set()
    for name in names:
        current: str | None = name
        while current:
            wanted.add(current)
            current = images[current].parent
    tags = image_tags(images_dir, extra)
    return {name: tags[name] for name in images if name in wanted}


class ImageBuilder:
    """Finds or builds the images of one images/ folder on one engine."""

    def __init__(self, client: docker.DockerClient, images_dir: Path, progress: Progress | None = None,
                 base_path: str = "auto", extra: dict[str, Path] | None = None):
        """base_path: "auto" (pull, else bootstrap), "pull" or "bootstrap" (LABCTL_BASE overrides);
        extra: images outside images/ (an exercise's own: name -> folder)."""
        self.client = client
        self.images_dir = images_dir
        self.progress = progress or (lambda message: None)
        self.base_path = os.environ.get("LABCTL_BASE", base_path)
        self.images = discover(images_dir, extra)
        self.tags = image_tags(images_dir, extra)
        self.packages = read_packages(images_dir)

    def exists(self, tag: str) -> bool:
        try:
            self.client.images.get(tag)
            return True
        except docker.errors.ImageNotFound:
            return False

    def ensure(self, names: list[str] | None = None, force: bool = False) -> dict[str, str]:
        """Make sure the named images (default all) exist, building only what is missing.

        Returns {name: tag}. With force, rebuild them and their parents (a bootstrapped root
        is reused: it depends only on the package list).
        """
        names = names or list(self.images)
        unknown = sorted(set(names) - set(self.images))
        if unknown:
            raise ImageBuildError(f"no image {', '.join(unknown)}: there is no {self.images_dir}/{unknown[0]}/Dockerfile "
                                  f"(images: {', '.join(self.images)})")
        if force:
            wanted = self._with_parents(names)
            todo = [name for name in self.images if name in wanted]
        else:
            todo = self.missing(names)
        while todo:  # in waves: every image whose parent is ready builds at once
            wave = [name for name in todo if self.images[name].parent not in todo]
            with ThreadPoolExecutor(max_workers=len(wave)) as pool:
                list(pool.map(lambda name: self._build(self.images[name]), wave))
            todo = [name for name in todo if name not in wave]
        return {name: self.tags[name] for name in names}

    def _with_parents(self, names: list[str]) -> set[str]:
        out: set[str] = set()
        for name in names:
            current: str | None = name
            while current:
                out.add(current)
                current = self.images[current].parent
        return out

    def base_source(self) -> tuple[str | None, str]:
        """How the base would be made now, without making it: ("the engine has it" | "registry" |
        "debootstrap", detail), or (None, why it cannot be, with the fix). Asks the registry through
        the engine (a manifest, not a download)."""
        digest = self._root_digest()
        for tag in (f"labctl-root:{digest}", REGISTRY_ROOT):
            if self.exists(tag):
                return "the engine has it", tag
        reason = ""
        if self.base_path in ("auto", "pull"):
            try:
                self.client.api.inspect_distribution(REGISTRY_ROOT)
                return "registry", f"{REGISTRY_ROOT} answers"
            except (docker.errors.APIError, requests.exceptions.RequestException) as error:
                reason = f"no registry answers ({_short(error) if isinstance(error, docker.errors.APIError) else error})"
                if self.base_path == "pull":
                    return None, reason
        path, problem = find_debootstrap()
        if path is None:
            return None, f"{reason + ', and ' if reason else ''}{problem}"
        return "debootstrap", f"{path} (the base is bootstrapped offline, about a minute)"

    def _root_digest(self) -> str:
        return hashlib.sha256(f"{DEBIAN_SUITE} {' '.join(self.packages['base'])}".encode()).hexdigest()[:12]

    def missing(self, names: list[str] | None = None) -> list[str]:
        """The images (with their parents) that need a build before `names` can run, parents first."""
        wanted = self._with_parents(names or list(self.images))
        return [name for name in self.images if name in wanted and not self.exists(self.tags[name])]

    # -- building ---------------------------------------------------------------------------

    def _build(self, image: ImageDef) -> None:
        tag = self.tags[image.name]
        started = time.monotonic()
        buildargs: dict[str, str] = {}
        if image.parent:
            buildargs["BASE"] = self.tags[image.parent]
        if image.packages:
            buildargs["PACKAGES"] = " ".join(self.packages[image.packages])
        if image.name == "base":
            root = self._base_root()
            if root.startswith("labctl-root:"):  # bootstrapped: the root is the base already
                self.client.images.get(root).tag(*tag.split(":"))
                self.progress(f"built {tag} (the bootstrapped root) in {time.monotonic() - started:.1f} s")
                return
            buildargs["ROOT"] = root
        self.progress(f"building {tag}")
        self._docker_build(image.name, tag, buildargs)
        self.progress(f"built {tag} in {time.monotonic() - started:.1f} s")

    def _docker_build(self, name: str, tag: str, buildargs: dict[str, str]) -> None:
        try:
            stream = self.client.api.build(
                path=str(self.images[name].folder), tag=tag, buildargs=buildargs, rm=True, forcerm=True,
                labels={LABEL: name}, decode=True, pull=False,
            )
            for chunk in stream:
                if "error" in chunk:
                    raise ImageBuildError(
                        f"building image {name!r} failed: {chunk['error'].strip()}\n"
                        f"(Dockerfile: {self.images[name].folder / 'Dockerfile'})")
                line = (chunk.get("stream") or "").strip()
                if line.startswith("Step "):
                    self.progress(f"{name}: {line}")
        except docker.errors.APIError as error:
            raise ImageBuildError(f"building image {name!r} failed: {error.explanation or error}") from error
        self.client.images.get(tag)  # raises if the build did not tag

    def _base_root(self) -> str:
        """The image the base Dockerfile starts FROM: pulled, or bootstrapped offline."""
        if self.base_path in ("auto", "pull"):
            if self.exists(REGISTRY_ROOT):
                self.progress(f"base: using {REGISTRY_ROOT}, already on the engine")
                return REGISTRY_ROOT
            self.progress(f"base: pulling {REGISTRY_ROOT}")
            try:
                self.client.images.pull(REGISTRY_ROOT)
                self.progress(f"base: took the registry path ({REGISTRY_ROOT})")
                return REGISTRY_ROOT
            except docker.errors.APIError as error:
                if self.base_path == "pull":
                    raise ImageBuildError(f"cannot pull {REGISTRY_ROOT}: {error.explanation or error}") from error
                self.progress(f"base: no registry answers ({_short(error)}); bootstrapping offline")
        return self._bootstrap_root()

    def _bootstrap_root(self) -> str:
        """debootstrap a minimal Debian with the base packages and import it as an image."""
        tag = f"labctl-root:{self._root_digest()}"
        if self.exists(tag):
            self.progress(f"base: using the bootstrapped root {tag}")
            return tag
        debootstrap, problem = find_debootstrap()
        if debootstrap is None:
            raise ImageBuildError(f"no registry answers to pull {REGISTRY_ROOT}, and {problem}")
        self.progress(f"base: took the offline path: debootstrap {DEBIAN_SUITE} (about a minute)")
        with tempfile.TemporaryDirectory(prefix="labctl-root-") as scratch:
            root = Path(scratch) / "root"
            command = [debootstrap, "--variant=minbase", "--include=" + ",".join(self.packages["base"]),
                       DEBIAN_SUITE, str(root), DEBIAN_MIRROR]
            log = Path(scratch) / "debootstrap.log"
            with open(log, "w") as out:
                process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                assert process.stdout is not None
                # A mirror that stops answering must not hang the build for ever.
                expired = threading.Event()
                def expire() -> None:
                    expired.set()
                    process.kill()

                watchdog = threading.Timer(BOOTSTRAP_TIMEOUT, expire)
                watchdog.daemon = True
                watchdog.start()
                for line in process.stdout:
                    out.write(line)
                    if line.startswith("I: ") and any(w in line for w in ("Retrieving", "Validating", "Extracting",
                                                                          "Installing", "Configuring", "Base")):
                        self.progress("debootstrap: " + line[3:].strip())
                code = process.wait()
                watchdog.cancel()
            if expired.is_set():
                raise ImageBuildError(f"debootstrap did not finish within {BOOTSTRAP_TIMEOUT // 60} minutes "
                                      f"(is {DEBIAN_MIRROR} reachable? LABCTL_DEBIAN_MIRROR names another)")
            if code != 0:
                tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
                raise ImageBuildError(f"debootstrap failed (exit {code}); its last lines:\n{tail}")
            # The downloaded packages go; the package lists stay, so an image built on this base installs
            # more packages (server-c's compiler) without downloading the lists again.
            for entry in (root / "var/cache/apt/archives").glob("*.deb"):
                entry.unlink()
            self.progress(f"base: importing the root file system as {tag}")
            self._import_root(root, tag)
        return tag

    def _import_root(self, root: Path, tag: str) -> None:
        repository, version = tag.split(":")
        tarball = root.parent / "root.tar"
        # tar(1) keeps device nodes, owners and modes exactly as debootstrap made them.
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."], check=True)
        try:
            self.client.api.import_image_from_file(str(tarball), repository=repository, tag=version,
                                                   changes=[f"LABEL {LABEL}=base", 'CMD ["/bin/bash"]'])
        except docker.errors.APIError as error:
            raise ImageBuildError(f"docker import of the bootstrapped root failed: {_short(error)}") from error
        self.client.images.get(tag)


def find_debootstrap() -> tuple[str | None, str]:
    """(the debootstrap to run, "") or (None, why not and the fix): $LABCTL_DEBOOTSTRAP, else the PATH's
    or /usr/sbin's. The offline bootstrap needs root: it creates device files and chroots."""
    named = os.environ.get("LABCTL_DEBOOTSTRAP")
    if named is not None:
        path = named if named and os.access(named, os.X_OK) else None
    else:
        path = shutil.which("debootstrap") or next(
            (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.path.exists(p)), None)
    if path is None:
        return None, ("debootstrap is not installed to build the base offline.\nFix: install it (Debian/Ubuntu: "
                      "sudo apt-get install debootstrap), or let the engine reach a registry.")
    if os.geteuid() != 0:
        return None, ("the offline bootstrap needs root (debootstrap creates device files and chroots).\n"
                      "Fix: run `sudo labctl images build` once; later runs reuse the image.")
    return path, ""


def _short(error: docker.errors.APIError) -> str:
    text = str(error.explanation or error)
    return text if len(text) < 160 else text[:157] + "..."
