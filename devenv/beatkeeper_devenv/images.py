"""Beatkeeper's images, built here from the Dockerfiles users build, with no registry.

`make images` (`python -m beatkeeper_devenv.images`) builds, with buildah:
- a Python base from Debian packages (debootstrap: python3, python3-venv,
  ca-certificates), which the Dockerfiles take as `PYTHON_IMAGE`;
- `beatkeeper-operator:<appVersion>` (operator/Dockerfile; it also runs beat)
  and `beatkeeper-worker:<appVersion>` (worker_image/Dockerfile);
- `beatkeeper-examples:<appVersion>`: examples/Dockerfile, FROM the worker
  image with the examples' task module, as worker_image/README.md says;
- `redis:<version>` from Debian's redis-server package (the chart's bundled
  Redis names the same version of the official image), and a static pause
  image for pod sandboxes.
Pip installs inside the builds read a wheelhouse downloaded once for the
base's Python from the pins in constraints.txt, so builds run without network
(`buildah bud --network none`) and always get the pinned versions.

Everything lives under the cache directory: buildah's storage, the base root
filesystems, the wheelhouse and one docker-archive per image, which is what a
node imports. Each image has a digest of its inputs (Dockerfile, context files,
build arguments, the images it builds on); an image whose digest has not
changed is not built again, and a node that holds it is not sent it again.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from beatkeeper_devenv.settings import DevSettings

Progress = Callable[[str], None]
SUITE = "bookworm"
PYTHON_PACKAGES = ("python3", "python3-venv", "ca-certificates")
REDIS_PACKAGES = ("redis-server",)
PAUSE_REF = "localhost/pause:local"
_SKIPPED = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", "build", "dist"}
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Built:
    """One image as a node imports it."""

    ref: str
    inputs: str
    archive: Path

    def as_import(self) -> dict[str, str]:
        return {"ref": self.ref, "inputs": self.inputs, "archive": str(self.archive)}


@dataclass(frozen=True)
class DockerfileImage:
    """An image built from a Dockerfile: which files of the repository form its context."""

    ref: str
    dockerfile: str  # relative to the context
    context: Path
    sources: tuple[str, ...]  # files and folders of the context that are sent
    build_args: dict[str, str] = field(default_factory=dict)
    wheels: bool = False  # add the wheelhouse as wheels/


def app_version(repo: Path) -> str:
    chart = (repo / "charts" / "beatkeeper" / "Chart.yaml").read_text()
    match = re.search(r'^appVersion:\s*"?([^"\s]+)"?', chart, re.M)
    if not match:
        raise ImageBuildFailed("charts/beatkeeper/Chart.yaml has no appVersion")
    return match.group(1)


def image_ref(name: str, tag: str) -> str:
    """The name containerd's CRI resolves a short `name:tag` in a pod spec to."""
    return f"docker.io/library/{name}:{tag}"


def _files(root: Path, sources: Iterable[str]) -> Iterator[Path]:
    for source in sources:
        path = root / source
        if path.is_file():
            yield path
            continue
        for found in sorted(path.rglob("*")):
            relative = found.relative_to(root).parts
            if found.is_file() and not any(
                part in _SKIPPED or part.endswith(".egg-info") for part in relative
            ):
                yield found


def _digest(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (deb822 .sources or sources.list)."""
    candidates = sorted((sources / "sources.list.d").glob("*.sources"))
    for path in candidates:
        for stanza in path.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
    legacy = sources / "sources.list"
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()  # options such as [arch=amd64]
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    raise ImageBuildFailed(f"no apt source for Debian {SUITE} in {sources}")


class Builder:
    """Builds and caches the images under `cache_dir/images`."""

    def __init__(self, settings: DevSettings, progress: Progress) -> None:
        self.repo = settings.crds_dir.parent
        self.home = settings.cache_dir / "images"
        self.progress = progress
        self.version = app_version(self.repo)

    @property
    def _buildah(self) -> list[str]:
        return [
            "buildah",
            "--storage-driver=vfs",
            f"--root={self.home / 'storage'}",
            f"--runroot={self.home / 'run'}",
        ]

    def buildah(self, *args: str, cwd: Path | None = None) -> str:
        result = subprocess.run(
            [*self._buildah, *args], capture_output=True, text=True, cwd=cwd, check=False
        )
        if result.returncode != 0:
            raise ImageBuildFailed(f"buildah {' '.join(args[:2])} failed:\n{result.stderr[-4000:]}")
        return result.stdout.strip()

    def _stamp(self, ref: str) -> Path:
        return self.home / "stamps" / f"{_digest(ref)}.json"

    def cached(self, ref: str, inputs: str) -> Built | None:
        stamp = self._stamp(ref)
        if not stamp.exists():
            return None
        built = json.loads(stamp.read_text())
        archive = Path(built["archive"])
        if built["inputs"] != inputs or not archive.exists():
            return None
        return Built(ref, inputs, archive)

    def _export(self, ref: str, inputs: str) -> Built:
        archives = self.home / "archives"
        archives.mkdir(parents=True, exist_ok=True)
        archive = archives / f"{ref.rsplit('/', 1)[-1].replace(':', '_')}-{inputs}.tar"
        partial = archive.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        self.buildah("push", "--quiet", ref, f"docker-archive:{partial}:{ref}")
        partial.rename(archive)
        stamp = self._stamp(ref)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(stamp.read_text())["archive"] if stamp.exists() else None
        stamp.write_text(json.dumps({"ref": ref, "inputs": inputs, "archive": str(archive)}))
        if previous and previous != str(archive):
            Path(previous).unlink(missing_ok=True)
        return Built(ref, inputs, archive)

    # Root filesystems from Debian packages

    def rootfs(self, packages: Sequence[str]) -> tuple[Path, str]:
        """A minbase tarball with `packages`, and its key; made once per mirror and list."""
        mirror = debian_mirror()
        key = _digest(SUITE, mirror, *packages, _debootstrap_version())
        tarball = self.home / "rootfs" / f"{key}.tar"
        if tarball.exists():
            return tarball, key
        started = time.monotonic()
        self.progress(f"debootstrap {SUITE} with {', '.join(packages)} from {mirror}")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=tarball.parent) as scratch:
            root = Path(scratch) / "rootfs"
            _check(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(packages)}",
                    SUITE,
                    str(root),
                    mirror,
                ],
                "debootstrap",
            )
            _slim(root)
            partial = tarball.with_suffix(".partial")
            _check(
                [
                    "tar",
                    "--numeric-owner",
                    "--exclude=./dev/*",
                    "--exclude=./proc/*",
                    "--exclude=./sys/*",
                    "-C",
                    str(root),
                    "-cf",
                    str(partial),
                    ".",
                ],
                "tar",
            )
            (tarball.parent / f"{key}.facts.json").write_text(json.dumps(_facts(root)))
            partial.rename(tarball)
        self.progress(f"root filesystem {key} in {time.monotonic() - started:.0f} s")
        return tarball, key

    def facts(self, key: str) -> dict[str, str]:
        """Versions read from a root filesystem when it was made (Python, Redis)."""
        facts: dict[str, str] = json.loads((self.home / "rootfs" / f"{key}.facts.json").read_text())
        return facts

    def from_rootfs(self, ref: str, tarball: Path, key: str, config: Sequence[str]) -> Built:
        inputs = _digest(ref, key, *config)
        found = self.cached(ref, inputs)
        if found:
            return found
        container = self.buildah("from", "--quiet", "scratch")
        try:
            self.buildah("add", "--quiet", container, str(tarball), "/")
            self.buildah("config", f"--env=PATH={_PATH}", *config, container)
            self.buildah("commit", "--quiet", "--rm", container, ref)
        except ImageBuildFailed:
            self.buildah("rm", container)
            raise
        return self._export(ref, inputs)

    # The images

    def python_base(self) -> tuple[Built, str]:
        tarball, key = self.rootfs(PYTHON_PACKAGES)
        ref = f"localhost/beatkeeper-python:{key}"
        return self.from_rootfs(ref, tarball, key, ["--cmd=python3"]), self.facts(key)["python"]

    def redis(self) -> Built:
        tarball, key = self.rootfs(REDIS_PACKAGES)
        version = self.facts(key)["redis"]
        ref = image_ref("redis", version)
        return self.from_rootfs(ref, tarball, key, ["--cmd=redis-server", "--user=999:999"])

    def pause(self) -> Built:
        folder = self.repo / "tests" / "images" / "pause"
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=False)
        if gcc.returncode != 0:
            raise ImageBuildFailed("gcc is needed for the pause image: apt-get install gcc")
        inputs = _digest(
            PAUSE_REF,
            (folder / "pause.c").read_bytes(),
            (folder / "Dockerfile").read_bytes(),
            gcc.stdout.splitlines()[0],
        )
        found = self.cached(PAUSE_REF, inputs)
        if found:
            return found
        with tempfile.TemporaryDirectory() as scratch:
            context = Path(scratch)
            _check(
                ["gcc", "-Os", "-static", "-o", str(context / "pause"), str(folder / "pause.c")],
                "gcc",
            )
            shutil.copy(folder / "Dockerfile", context / "Dockerfile")
            self.buildah(
                "bud",
                "--quiet",
                "--isolation=oci",
                "--network=none",
                "-t",
                PAUSE_REF,
                ".",
                cwd=context,
            )
        return self._export(PAUSE_REF, inputs)

    def wheelhouse(self, python: str) -> tuple[Path, str]:
        """Wheels of every pin in constraints.txt for the base's Python (binary only)."""
        constraints = (self.repo / "constraints.txt").read_bytes()
        key = _digest(constraints, python)
        folder = self.home / "wheels" / key
        if (folder / ".complete").exists():
            return folder, key
        self.progress(f"downloading wheels for Python {python} (pinned by constraints.txt)")
        folder.mkdir(parents=True, exist_ok=True)
        platforms: list[str] = []
        for minor in range(17, 37):
            platforms += ["--platform", f"manylinux_2_{minor}_x86_64"]
        _check(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                f"--dest={folder}",
                "--only-binary=:all:",
                f"--python-version={python}",
                "--implementation=cp",
                "--abi=cp" + "".join(python.split(".")[:2]),
                *platforms,
                "--platform=manylinux2014_x86_64",
                "--platform=linux_x86_64",
                "-r",
                str(self.repo / "constraints.txt"),
            ],
            "pip download",
        )
        (folder / ".complete").touch()
        return folder, key

    def dockerfile(
        self, image: DockerfileImage, base: Sequence[Built], wheels: Path | None
    ) -> Built:
        files = list(_files(image.context, image.sources))
        contents = [f"{p.relative_to(image.context)}\0".encode() + p.read_bytes() for p in files]
        args = sorted(f"{k}={v}" for k, v in image.build_args.items())
        inputs = _digest(
            image.ref,
            image.dockerfile,
            *args,
            *(b.inputs for b in base),
            wheels.name if wheels else "",
            *contents,
        )
        found = self.cached(image.ref, inputs)
        if found:
            return found
        started = time.monotonic()
        self.progress(f"building {image.ref} from {image.dockerfile}")
        with tempfile.TemporaryDirectory(dir=self.home) as scratch:
            context = Path(scratch)
            for path in files:
                target = context / path.relative_to(image.context)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            if wheels is not None:
                shutil.copytree(wheels, context / "wheels", copy_function=_link)
                (context / "wheels" / ".complete").unlink(missing_ok=True)
            build_args = [f"--build-arg={a}" for a in args]
            self.buildah(
                "bud",
                "--quiet",
                "--isolation=oci",
                "--network=none",
                "--layers=false",
                f"--file={image.dockerfile}",
                *build_args,
                f"--tag={image.ref}",
                ".",
                cwd=context,
            )
        built = self._export(image.ref, inputs)
        self.progress(f"built {image.ref} in {time.monotonic() - started:.0f} s")
        return built

    def product(self) -> dict[str, Built]:
        """Every image `make images` makes, by short name."""
        base, python = self.python_base()
        wheels, _key = self.wheelhouse(python)
        offline = {
            "PYTHON_IMAGE": base.ref,
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": "/wheelhouse",
        }
        shared = ("constraints.txt", ".dockerignore", "core")
        worker = self.dockerfile(
            DockerfileImage(
                ref=image_ref("beatkeeper-worker", self.version),
                dockerfile="worker_image/Dockerfile",
                context=self.repo,
                sources=(*shared, "worker_image"),
                build_args=offline,
                wheels=True,
            ),
            [base],
            wheels,
        )
        operator = self.dockerfile(
            DockerfileImage(
                ref=image_ref("beatkeeper-operator", self.version),
                dockerfile="operator/Dockerfile",
                context=self.repo,
                sources=(
                    *shared,
                    "pyproject.toml",
                    "README.md",
                    "beat",
                    "operator/beatkeeper",
                    "operator/Dockerfile",
                ),
                build_args=offline,
                wheels=True,
            ),
            [base],
            wheels,
        )
        examples = self.on_worker(
            worker,
            "beatkeeper-examples",
            self.repo / "examples",
            ("Dockerfile", "beatkeeper_examples"),
        )
        return {
            "pause": self.pause(),
            "redis": self.redis(),
            "python": base,
            "worker": worker,
            "operator": operator,
            "examples": examples,
        }

    def on_worker(self, worker: Built, name: str, context: Path, sources: Sequence[str]) -> Built:
        """An image FROM the worker image, as users build theirs (`context`/Dockerfile)."""
        return self.dockerfile(
            DockerfileImage(
                ref=image_ref(name, self.version),
                dockerfile="Dockerfile",
                context=context,
                sources=tuple(sources),
                build_args={"WORKER_IMAGE": worker.ref},
            ),
            [worker],
            None,
        )


def _link(source: str, target: str) -> None:
    try:
        Path(target).hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)


def _check(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageBuildFailed(f"{what} failed ({result.returncode}):\n{result.stderr[-4000:]}")


def _debootstrap_version() -> str:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "debootstrap"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ImageBuildFailed("debootstrap is needed for the images: apt-get install debootstrap")
    return result.stdout


def _slim(root: Path) -> None:
    """What an image does not need: apt's caches and lists, docs (copyrights kept), locales."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in root.glob(pattern):
            if path.is_file():
                path.unlink()
    for folder in ("usr/share/man", "usr/share/locale", "usr/share/info"):
        for path in (root / folder).glob("*"):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for path in (root / "usr/share/doc").rglob("*"):
        if path.is_file() and path.name != "copyright":
            path.unlink()


def _facts(root: Path) -> dict[str, str]:
    """Package versions of a root filesystem, read from dpkg's status file."""
    status = (root / "var/lib/dpkg/status").read_text()
    versions = dict(re.findall(r"^Package: (\S+)\n(?:.*\n)*?Version: (\S+)", status, re.M))
    facts = {}
    python = versions.get("python3.11") or versions.get("python3-minimal")
    if python:
        facts["python"] = python.split("-")[0].split(":")[-1]
    redis = versions.get("redis-server")
    if redis:
        facts["redis"] = redis.split(":")[-1].split("-")[0]
    return facts


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_images(
    settings: DevSettings,
    progress: Progress,
    extra: Sequence[tuple[str, Path, Sequence[str]]] = (),
) -> dict[str, Built]:
    """Build what changed; `extra`: (name, context, sources) of images FROM the worker image."""
    builder = Builder(settings, progress)
    with _exclusive(builder.home / ".lock"):
        started = time.monotonic()
        images = builder.product()
        for name, context, sources in extra:
            images[name] = builder.on_worker(images["worker"], name, context, sources)
        progress(f"images ready in {time.monotonic() - started:.0f} s")
    return images


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m beatkeeper_devenv.images")
    parser.add_argument("--sizes", action="store_true", help="print each image's size")
    args = parser.parse_args(argv)
    from beatkeeper_devenv.settings import DevSettings

    settings = DevSettings.from_env(os.environ)

    def say(message: str) -> None:
        print(f"[beatkeeper] {message}", file=sys.stderr, flush=True)

    images = ensure_images(settings, say)
    for name, built in images.items():
        # The archive holds every layer uncompressed: the image's size on a node.
        size = f"{built.archive.stat().st_size / 2**20:8.1f} MiB  " if args.sizes else ""
        print(f"{name:<9} {size}{built.ref}")
    from beatkeeper_devenv.node import import_images, running_node

    node = running_node(settings)
    if node is None:
        say("no node runs now: a node imports these when it starts (`beatkeeper dev up`)")
    else:
        imported = import_images(node, [b.as_import() for b in images.values()])
        say(f"imported into the running node: {', '.join(imported) or 'nothing new'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
