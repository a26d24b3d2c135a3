"""Build and cache the Go binaries the local environment runs.

Four modules, each its own dependency graph:
- tests/cluster/: one multi-call binary for the control plane and the node
  (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
  kube-proxy), all from the same Kubernetes modules;
- tests/coredns/: CoreDNS with only the plugins the node's cluster DNS uses;
- tests/kubeconform/: kubeconform's own command, for the schema tests;
- tests/health/: the GitOps health checker (kstatus, Argo CD's Lua VM, Flux's
  CEL), for the end-to-end health tests.

Binaries, GOMODCACHE and GOCACHE live under the cache directory, outside the
repository; a binary's name carries a hash of its inputs, so it is rebuilt only
when they change. A cold build takes minutes on two cores, so progress is
reported per compiled package.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from beatkeeper_devenv.settings import DevSettings

Progress = Callable[[str], None]

_MODULE_FILES = ("go.mod", "go.sum", "main.go")
_VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


class BuildFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class GoBuild:
    """The inputs of one cached Go build and where its output goes.

    `kubernetes`: stamp the Kubernetes version into the binary (the control
    plane's module), so the servers report v1.32.x rather than v0.0.0-master.
    """

    module_dir: Path
    cache_dir: Path
    name: str = "cluster"
    kubernetes: bool = True
    package: str = "."  # or a command of a dependency, pinned by the module's tools.go
    files: tuple[str, ...] = _MODULE_FILES  # the inputs hashed into the binary's name

    @property
    def kubernetes_version(self) -> str:
        match = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", self._read("go.mod"), re.M)
        if not match:
            raise BuildFailed(f"{self.module_dir / 'go.mod'} does not require k8s.io/kubernetes")
        return match.group(1)

    @property
    def binary(self) -> Path:
        return self.cache_dir / "bin" / f"{self.name}-{self._input_hash()}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GOMODCACHE=str(self.cache_dir / "go" / "mod"),
            GOCACHE=str(self.cache_dir / "go" / "build"),
            GOTOOLCHAIN="local",
            GOFLAGS="-buildvcs=false -mod=readonly",
            CGO_ENABLED="0",
        )
        return env

    def ldflags(self) -> str:
        flags = ["-s", "-w"]
        if not self.kubernetes:
            return " ".join(flags)
        version = self.kubernetes_version
        major, minor = version.lstrip("v").split(".")[:2]
        for package in _VERSION_PACKAGES:
            flags += [
                f"-X {package}.gitVersion={version}",
                f"-X {package}.gitMajor={major}",
                f"-X {package}.gitMinor={minor}",
                f"-X {package}.gitTreeState=clean",
            ]
        return " ".join(flags)

    def _read(self, name: str) -> str:
        return (self.module_dir / name).read_text()

    def _input_hash(self) -> str:
        digest = hashlib.sha256()
        for name in self.files:
            digest.update(name.encode() + b"\0" + (self.module_dir / name).read_bytes())
        digest.update(_go_version().encode())
        return digest.hexdigest()[:16]


def _go_version() -> str:
    try:
        out = subprocess.run(["go", "version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise BuildFailed(f"Go is needed to build the control plane: {error}") from error
    return out.stdout.strip()


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Parallel test sessions must not build the same binary twice.
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _count_packages(build: GoBuild) -> int:
    out = subprocess.run(
        ["go", "list", "-deps", build.package],
        cwd=build.module_dir,
        env=build.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise BuildFailed(f"go list failed:\n{out.stderr[-4000:]}")
    return len(out.stdout.split())


def _compile(build: GoBuild, output: Path, progress: Progress) -> None:
    started = time.monotonic()
    progress("resolving Go modules (first run downloads them)")
    total = _count_packages(build)
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", build.ldflags(), "-o", str(output)]
    cmd.append(build.package)
    proc = subprocess.Popen(
        cmd, cwd=build.module_dir, env=build.env(), stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=40)
    for done, line in enumerate(proc.stderr, start=1):
        tail.append(line)
        if done % 50 == 0:
            elapsed = time.monotonic() - started
            progress(f"compiling {min(done, total)}/{total} packages ({elapsed:.0f} s)")
    if proc.wait() != 0:
        raise BuildFailed(f"go build failed:\n{''.join(tail)}")


def _ensure(build: GoBuild, what: str, progress: Progress | None) -> Path:
    report = progress or _print_progress
    binary = build.binary
    if binary.exists():
        return binary
    with _exclusive(binary.parent / f".{build.name}.lock"):
        if binary.exists():
            return binary
        started = time.monotonic()
        report(f"building {what} (cold: a few minutes)")
        partial = binary.with_suffix(".partial")
        _compile(build, partial, report)
        partial.rename(binary)
        report(f"built {binary} in {time.monotonic() - started:.0f} s")
    return binary


def ensure_cluster_binary(settings: DevSettings, progress: Progress | None = None) -> Path:
    """Return the cached control-plane and node binary, building it first if needed."""
    build = GoBuild(module_dir=settings.cluster_module, cache_dir=settings.cache_dir)
    return _ensure(build, f"the control plane and node {build.kubernetes_version}", progress)


def ensure_coredns(settings: DevSettings, progress: Progress | None = None) -> Path:
    """Return the cached CoreDNS binary of the node's cluster DNS, building it if needed."""
    build = GoBuild(
        module_dir=settings.coredns_module,
        cache_dir=settings.cache_dir,
        name="coredns",
        kubernetes=False,
    )
    return _ensure(build, "CoreDNS for the node's cluster DNS", progress)


def ensure_kubeconform(settings: DevSettings, progress: Progress | None = None) -> Path:
    """Return the cached kubeconform (the real command, pinned by tests/kubeconform)."""
    build = GoBuild(
        module_dir=settings.kubeconform_module,
        cache_dir=settings.cache_dir,
        name="kubeconform",
        kubernetes=False,
        package="github.com/yannh/kubeconform/cmd/kubeconform",
        files=("go.mod", "go.sum", "tools.go"),
    )
    return _ensure(build, "kubeconform", progress)


def ensure_health_checker(settings: DevSettings, progress: Progress | None = None) -> Path:
    """Return the cached GitOps health checker (tests/health: kstatus, gopher-lua, cel-go)."""
    build = GoBuild(
        module_dir=settings.health_module,
        cache_dir=settings.cache_dir,
        name="health",
        kubernetes=False,
    )
    return _ensure(build, "the GitOps health checker", progress)


def _print_progress(message: str) -> None:
    print(f"[beatkeeper] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Print the paths of the binaries named (default: all), building what is missing."""
    from beatkeeper_devenv.settings import DevSettings

    builds = {
        "cluster": ensure_cluster_binary,
        "coredns": ensure_coredns,
        "kubeconform": ensure_kubeconform,
        "health": ensure_health_checker,
    }
    names = list(sys.argv[1:] if argv is None else argv) or list(builds)
    unknown = sorted(set(names) - set(builds))
    if unknown:
        raise SystemExit(f"unknown build {', '.join(unknown)}; choose from {', '.join(builds)}")
    dev = DevSettings.from_env(os.environ)
    for name in names:
        print(builds[name](dev))


if __name__ == "__main__":
    main()
