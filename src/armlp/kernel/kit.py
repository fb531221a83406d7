"""What building a kernel live patch needs, fetched once per release.

A patch module is built with Kbuild against the release's headers
(``linux-headers-REL`` and ``-common``, armhf), whose host tools (``fixdep``,
``modpost``) come from ``linux-kbuild-6.1`` for the build machine, of the
same version; the scan needs the release's image with symbols (``vmlinux``
from ``linux-image-REL-dbg``, as kpatch-build needs debuginfo).  Debian
keeps all four at one version; they are downloaded through a private apt
configuration (the machine's dpkg architectures and apt state are left
alone) and unpacked into ``<cache>/<REL>``:

    headers/          linux-headers-REL (Makefile rewritten to the -common tree here)
    headers-common/   linux-headers-REL-common
    kbuild/           linux-kbuild-6.1 (host binaries)
    vmlinux           the image with symbols
    image.deb         linux-image-REL (vmlinuz, modules): what the tests boot
    guest/            vmlinuz and a static busybox, for a test guest (on demand)

The cache is ``$ARMLP_KERNEL_CACHE`` or ``~/.cache/armlp/kernel``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from armlp.errors import ArmlpError

#: The cross compiler Debian builds its armhf kernels with.
KERNEL_CROSS = "arm-linux-gnueabihf-"
RELEASE_RE = re.compile(r"^\d+\.\d+\.\d+-\d+-[a-z0-9]+$")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"


class KitError(ArmlpError):
    """A kernel release's build kit cannot be found or fetched."""


@dataclass(frozen=True)
class KernelKit:
    """One release's headers, host kbuild and image, unpacked."""

    release: str
    root: Path

    @property
    def headers(self) -> Path:
        return self.root / "headers"

    @property
    def vmlinux(self) -> Path:
        return self.root / "vmlinux"

    @property
    def image_deb(self) -> Path:
        return self.root / "image.deb"

    def make_args(self, module_dir: Path) -> list[str]:
        """``make`` arguments that build the Kbuild module in *module_dir*."""
        return ["make", "-s", "-C", str(self.headers), f"M={module_dir}", "ARCH=arm",
                f"CROSS_COMPILE={KERNEL_CROSS}", "modules"]

    def complete(self) -> bool:
        return (self.root / ".complete").exists()


def guest_files(k: KernelKit) -> tuple[Path, Path]:
    """The release's ``vmlinuz`` and an armhf static busybox, for booting a
    test guest (:mod:`armlp.kernel.vm`); fetched on first use."""
    guest = k.root / "guest"
    vmlinuz, busybox = guest / "vmlinuz", guest / "busybox"
    if vmlinuz.exists() and busybox.exists():
        return vmlinuz, busybox
    tmp = Path(tempfile.mkdtemp(prefix=".guest-", dir=k.root))
    try:
        with PrivateApt() as apt:
            apt.run("apt-get", "download", "-qq", "busybox-static", cwd=tmp)
        x = tmp / "x"
        run_tool(["dpkg-deb", "-x", str(next(tmp.glob("busybox-static_*.deb"))), str(x)])
        run_tool(["dpkg-deb", "-x", str(k.image_deb), str(x)])
        guest.mkdir(exist_ok=True)
        (x / "bin" / "busybox").rename(busybox)
        (x / "boot" / f"vmlinuz-{k.release}").rename(vmlinuz)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return vmlinuz, busybox


def cache_root() -> Path:
    env = os.environ.get("ARMLP_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "armlp" / "kernel"


def check_release(release: str) -> str:
    if not RELEASE_RE.match(release):
        raise KitError(f"{release!r} is not a Debian kernel release (like 6.1.0-50-armmp)")
    if not release.endswith("-armmp"):
        raise KitError(f"release {release}: only Debian's armhf armmp kernels are supported")
    return release


def default_release() -> str:
    """``$ARMLP_KERNEL_RELEASE``, else the newest release already in the cache,
    else Debian's current armmp release (asks the archive)."""
    env = os.environ.get("ARMLP_KERNEL_RELEASE")
    if env:
        return check_release(env)
    root = cache_root()
    if root.is_dir():
        have = sorted((p.name for p in root.iterdir() if (p / ".complete").exists()),
                      key=_release_key)
        if have:
            return have[-1]
    with PrivateApt() as apt:
        out = apt.run("apt-cache", "depends", "linux-image-armmp")
    m = re.search(r"Depends: linux-image-(\S+-armmp)$", out, re.M)
    if not m:
        raise KitError("cannot find Debian's armhf armmp kernel in the archive")
    return m.group(1)


def _release_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def kit(release: str | None = None, *, fetch: bool = True) -> KernelKit:
    """The kit of *release* (default: :func:`default_release`), fetched into the
    cache on first use."""
    rel = check_release(release) if release else default_release()
    k = KernelKit(rel, cache_root() / rel)
    if k.complete():
        return k
    if not fetch:
        raise KitError(f"no build kit for {rel} in {k.root} (armlp kernel fetch {rel})")
    _fetch(k)
    return k


def _fetch(k: KernelKit) -> None:
    for tool in ("apt-get", "dpkg-deb", "make", f"{KERNEL_CROSS}gcc"):
        if shutil.which(tool) is None:
            hint = " (install gcc-arm-linux-gnueabihf)" if tool.endswith("gcc") else ""
            raise KitError(f"{tool} not found{hint}")
    rel = k.release
    print(f"armlp: fetching the build kit of {rel} into {k.root} (once; about 700 MB "
          f"downloaded)", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{rel}-", dir=_mkdir(cache_root())))
    try:
        with PrivateApt() as apt:
            version = apt.version(f"linux-image-{rel}")
            abi = rel.rsplit("-", 1)[0]                       # 6.1.0-50
            series = ".".join(abi.split(".")[:2])              # 6.1
            pkgs = [f"linux-image-{rel}={version}", f"linux-image-{rel}-dbg={version}",
                    f"linux-headers-{rel}={version}", f"linux-headers-{abi}-common={version}",
                    f"linux-kbuild-{series}:{_host_arch()}={version}"]
            apt.run("apt-get", "download", "-qq", *pkgs, cwd=tmp)
        debs = {d.name.split("_")[0]: d for d in tmp.glob("*.deb")}
        x = tmp / "x"
        for name in (f"linux-headers-{rel}", f"linux-headers-{abi}-common",
                     f"linux-kbuild-{series}"):
            run_tool(["dpkg-deb", "-x", str(debs[name]), str(x)])
        _extract_vmlinux(debs[f"linux-image-{rel}-dbg"], rel, tmp / "vmlinux")
        out = tmp / "kit"
        out.mkdir()
        (x / "usr/src" / f"linux-headers-{rel}").rename(out / "headers")
        (x / "usr/src" / f"linux-headers-{abi}-common").rename(out / "headers-common")
        (x / "usr/lib" / f"linux-kbuild-{series}").rename(out / "kbuild")
        (tmp / "vmlinux").rename(out / "vmlinux")
        debs[f"linux-image-{rel}"].rename(out / "image.deb")
        _relink_headers(out, k.root, abi, series)
        (out / ".complete").write_text(version + "\n")
        if k.root.exists():
            shutil.rmtree(k.root)
        out.rename(k.root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _relink_headers(out: Path, final: Path, abi: str, series: str) -> None:
    """Point the headers at the -common tree and the host kbuild unpacked
    beside them: Debian's files name them by /usr paths.  Links become
    relative; the Makefile's include names *final*, where the kit will live."""
    for tree in ("headers", "headers-common"):
        for name in ("scripts", "tools"):
            link = out / tree / name
            if link.is_symlink() and f"linux-kbuild-{series}" in os.readlink(link):
                link.unlink()
                link.symlink_to(f"../kbuild/{name}")
    makefile = out / "headers" / "Makefile"
    text = makefile.read_text()
    makefile.write_text(text.replace(f"/usr/src/linux-headers-{abi}-common",
                                     str(final / "headers-common")))


def _extract_vmlinux(deb: Path, rel: str, dest: Path) -> None:
    """Stream only the image out of the -dbg package (it is mostly modules)."""
    member = f"./usr/lib/debug/boot/vmlinux-{rel}"
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                          stdout=subprocess.PIPE) as deb_tar, dest.open("wb") as f:
        tar = subprocess.run(["tar", "-xO", member], stdin=deb_tar.stdout, stdout=f,
                             stderr=subprocess.PIPE, check=False)
    if tar.returncode != 0 or dest.stat().st_size == 0:
        raise KitError(f"{deb.name} has no {member}")


def _host_arch() -> str:
    return run_tool(["dpkg", "--print-architecture"]).strip()


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def run_tool(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise KitError(f"{cmd[0]} {cmd[1]} failed: {lines[-1] if lines else proc.returncode}")
    return proc.stdout


class PrivateApt:
    """apt with its own sources, lists and cache, for armhf and the host."""

    def __enter__(self) -> PrivateApt:
        self.dir = Path(tempfile.mkdtemp(prefix=".apt-", dir=_mkdir(cache_root())))
        d = self.dir
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d",
                    "state/lists/partial", "cache/archives/partial"):
            (d / sub).mkdir(parents=True)
        (d / "state/status").touch()
        (d / "etc/sources.list").write_text(
            f"deb [arch=armhf,{_host_arch()} signed-by=/usr/share/keyrings/"
            f"debian-archive-keyring.gpg] {DEBIAN_MIRROR} {SUITE} main\n")
        (d / "apt.conf").write_text(
            f'APT::Architecture "armhf";\n'
            f'APT::Architectures {{ "armhf"; "{_host_arch()}"; }};\n'
            f'Dir::Etc "{d}/etc";\nDir::Etc::sourcelist "{d}/etc/sources.list";\n'
            f'Dir::Etc::sourceparts "{d}/etc/sources.list.d";\n'
            f'Dir::Etc::preferencesparts "{d}/etc/preferences.d";\n'
            f'Dir::Etc::trusted "/etc/apt/trusted.gpg";\n'
            f'Dir::Etc::trustedparts "/etc/apt/trusted.gpg.d";\n'
            f'Dir::State "{d}/state";\nDir::State::status "{d}/state/status";\n'
            f'Dir::Cache "{d}/cache";\nAPT::Sandbox::User "root";\n')
        self.env = {**os.environ, "APT_CONFIG": str(d / "apt.conf")}
        self.run("apt-get", "update", "-qq")
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, *cmd: str, cwd: Path | None = None) -> str:
        return run_tool(list(cmd), cwd=cwd, env=self.env)

    def version(self, package: str) -> str:
        out = self.run("apt-cache", "policy", package)
        m = re.search(r"Candidate:\s*(\S+)", out)
        if not m or m.group(1) == "(none)":
            raise KitError(f"{package} is not in Debian {SUITE}")
        return m.group(1)
