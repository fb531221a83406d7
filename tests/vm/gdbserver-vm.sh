#!/usr/bin/env bash
# A real gdbserver on 32-bit ARM Linux, for the attach tests: Debian's armhf
# armmp kernel under qemu-system-arm -M virt, booting a small initramfs
# (busybox, Debian's gdbserver and its libraries) that runs
# `gdbserver --once 0.0.0.0:1234 /prog` for every connection, with the guest's
# port 1234 forwarded to 127.0.0.1:PORT.
#
#   gdbserver-vm.sh prepare                   download and unpack into build/vm (once; needs
#                                             the network, run by ./run.sh setup)
#   gdbserver-vm.sh boot PROGRAM PORT RUNDIR  pack PROGRAM as /prog, boot, print "READY PORT"
#                                             once gdbserver listens; RUNDIR/qemu.pid, console.log
#
# The packages come through a private apt configuration (APT_CONFIG), so the
# machine's dpkg architectures and apt state are left alone.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VM=$(cd "$HERE/../.." && pwd)/build/vm
PKGS="busybox-static gdbserver libc6 libgcc-s1 libstdc++6"

prepare() {
    [ -s "$VM/vmlinuz" ] && [ -d "$VM/base/bin" ] && return 0
    command -v qemu-system-arm >/dev/null || { echo "qemu-system-arm not found" >&2; exit 1; }
    local apt=$VM/apt
    rm -rf "$VM" && mkdir -p "$VM/cache" "$apt/etc/apt.conf.d" "$apt/etc/preferences.d" \
        "$apt/etc/sources.list.d" "$apt/state/lists/partial" "$apt/cache/archives/partial"
    touch "$apt/state/status"
    echo "deb [arch=armhf signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
         "http://deb.debian.org/debian bookworm main" > "$apt/etc/sources.list"
    cat > "$apt/apt.conf" <<CONF
APT::Architecture "armhf";
APT::Architectures "armhf";
Dir::Etc "$apt/etc";
Dir::Etc::sourcelist "$apt/etc/sources.list";
Dir::Etc::sourceparts "$apt/etc/sources.list.d";
Dir::Etc::preferencesparts "$apt/etc/preferences.d";
Dir::Etc::trusted "/etc/apt/trusted.gpg";
Dir::Etc::trustedparts "/etc/apt/trusted.gpg.d";
Dir::State "$apt/state";
Dir::State::status "$apt/state/status";
Dir::Cache "$apt/cache";
APT::Sandbox::User "root";
CONF
    export APT_CONFIG=$apt/apt.conf
    apt-get update -qq >/dev/null
    local kver
    kver=$(apt-cache depends linux-image-armmp | sed -n 's/.*Depends: linux-image-\(.*-armmp\)$/\1/p' | head -1)
    [ -n "$kver" ] || { echo "cannot find Debian's armhf armmp kernel" >&2; exit 1; }
    (cd "$VM/cache" && apt-get download -qq "linux-image-$kver" $PKGS >/dev/null)
    unset APT_CONFIG
    local x=$VM/x base=$VM/base
    mkdir -p "$x" "$base/bin" "$base/lib/arm-linux-gnueabihf" "$base/modules"
    for deb in "$VM"/cache/*.deb; do dpkg-deb -x "$deb" "$x"; done
    cp "$x/boot/vmlinuz-$kver" "$VM/vmlinuz.tmp"
    cp "$x/bin/busybox" "$x/usr/bin/gdbserver" "$base/bin/"
    local ml=$x/lib/arm-linux-gnueabihf
    cp -L "$ml/ld-linux-armhf.so.3" "$ml/libc.so.6" "$ml/libm.so.6" "$ml/libgcc_s.so.1" \
          "$x/usr/lib/arm-linux-gnueabihf/libstdc++.so.6" "$base/lib/arm-linux-gnueabihf/"
    ln -sf arm-linux-gnueabihf/ld-linux-armhf.so.3 "$base/lib/ld-linux-armhf.so.3"
    local k=$x/lib/modules/$kver/kernel
    cp "$k/net/core/failover.ko" "$k/drivers/net/net_failover.ko" \
       "$k/drivers/virtio/virtio_mmio.ko" "$k/drivers/net/virtio_net.ko" "$base/modules/"
    cat > "$base/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin LD_LIBRARY_PATH=/lib/arm-linux-gnueabihf
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in failover net_failover virtio_mmio virtio_net; do insmod /modules/$m.ko; done
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0
while true; do gdbserver --once 0.0.0.0:1234 /prog; echo "gdbserver exited rc=$?"; done
INIT
    chmod +x "$base/init"
    rm -rf "$x"
    mv "$VM/vmlinuz.tmp" "$VM/vmlinuz"
}

boot() {
    local prog=$1 port=$2 run=$3
    [ -s "$VM/vmlinuz" ] || { echo "no VM in $VM: run '$0 prepare' (./run.sh setup)" >&2; exit 1; }
    mkdir -p "$run" && rm -rf "$run/root" && cp -a "$VM/base" "$run/root"
    mkdir -p "$run/root/proc" "$run/root/sys" "$run/root/dev" "$run/root/tmp"
    cp "$prog" "$run/root/prog"
    # No cpio on the host: the ARM busybox packs the initramfs under qemu-arm.
    (cd "$run/root" && find . | qemu-arm ./bin/busybox cpio -o -H newc 2>/dev/null \
        | gzip -1 > "$run/initrd.gz")
    : > "$run/console.log"
    qemu-system-arm -M virt -cpu cortex-a15 -smp 2 -m 256 -display none -monitor none \
        -serial file:"$run/console.log" -kernel "$VM/vmlinuz" -initrd "$run/initrd.gz" \
        -append "console=ttyAMA0 rdinit=/init loglevel=4" \
        -netdev user,id=n,hostfwd=tcp:127.0.0.1:$port-:1234 -device virtio-net-device,netdev=n \
        -pidfile "$run/qemu.pid" -daemonize
    # gdbserver says "Listening on port" after listen(); a probe would use up
    # its one session.
    for _ in $(seq 1200); do
        grep -q "Listening on port" "$run/console.log" && { echo "READY $port"; return 0; }
        kill -0 "$(cat "$run/qemu.pid")" 2>/dev/null || { echo "qemu-system-arm died" >&2; exit 1; }
        sleep 0.1
    done
    echo "gdbserver did not come up within 120 s" >&2
    exit 1
}

case "${1:-}" in
    prepare) prepare ;;
    boot) [ $# -eq 4 ] || { echo "usage: $0 boot PROGRAM PORT RUNDIR" >&2; exit 2; }; boot "$2" "$3" "$4" ;;
    *) echo "usage: $0 prepare | boot PROGRAM PORT RUNDIR" >&2; exit 2 ;;
esac
