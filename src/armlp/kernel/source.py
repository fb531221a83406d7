"""The source a release was built from, for ``armlp kernel build --diff``.

Debian ships the patched tree of each kernel version as ``linux-source-6.1``
(one ``.tar.xz`` in a ``.deb``); the version that matches a kit is the one in
its ``.complete`` stamp.  It is unpacked once into ``<kit>/source`` (1.5 GB,
about 20 s).  Nothing here is trusted: the diff build proves that this tree,
compiled as Kbuild compiles it, gives the release's vmlinux byte for byte.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from armlp.kernel.kit import KernelKit, KitError, PrivateApt, run_tool


def source_tree(k: KernelKit, *, fetch: bool = True) -> Path:
    """The unpacked tree of *k*'s kernel version (fetched on first use)."""
    tree = k.root / "source"
    if (tree / ".complete").exists():
        return tree
    if not fetch:
        raise KitError(f"no kernel source for {k.release} in {tree} "
                       f"(armlp kernel fetch --source {k.release})")
    version = (k.root / ".complete").read_text().strip()
    series = ".".join(k.release.split(".")[:2])                  # 6.1
    package = f"linux-source-{series}"
    print(f"armlp: fetching {package} {version} into {tree} (once; about 140 MB downloaded)",
          file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=".source-", dir=k.root))
    try:
        with PrivateApt() as apt:
            try:
                apt.run("apt-get", "download", "-qq", f"{package}={version}", cwd=tmp)
            except KitError:
                raise KitError(f"{package} {version} is not in the Debian archive any more: "
                               f"the kit of {k.release} is older than the archive") from None
        deb = next(tmp.glob(f"{package}_*.deb"))
        out = tmp / "tree"
        out.mkdir()
        member = f"./usr/src/{package}.tar.xz"
        tarball = tmp / "source.tar.xz"
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                              stdout=subprocess.PIPE) as deb_tar, tarball.open("wb") as f:
            rc = subprocess.call(["tar", "-xO", member], stdin=deb_tar.stdout, stdout=f)
        if rc != 0 or tarball.stat().st_size == 0:
            raise KitError(f"{deb.name} has no {member}")
        deb.unlink()
        run_tool(["tar", "-xJf", str(tarball), "-C", str(out), "--strip-components=1"])
        tarball.unlink()
        (out / ".complete").write_text(version + "\n")
        if tree.exists():
            shutil.rmtree(tree)
        out.rename(tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tree
