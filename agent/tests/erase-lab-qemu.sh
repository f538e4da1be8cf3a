#!/bin/sh
# QEMU lab test of decom.disk_erase on emulated hardware (issue 5, "Lab"):
#   - the NVMe controller (two namespaces, QEMU 7.2: oacs=0x10a, fna=0, sanicap=0) is erased
#     by `auto` with Format NVM, and the host-side images read all zeros afterwards;
#   - a virtio disk with discard=unmap and a SATA disk (AHCI; ATA IDENTIFY through SG_IO, QEMU
#     has no security feature set) are erased and verified (host images all zeros);
#   - a virtio disk with a mounted ext4 partition, and an excluded virtio disk, are left
#     untouched (byte-identical) and reported as skipped.
#
#   erase-lab-qemu.sh ERASE_PROBE [KERNEL_TREE]
#
# ERASE_PROBE is a static program run in the guest as `ERASE_PROBE vdc` (vdc = the device to
# exclude) that erases every disk with method auto under ramdisk authority and prints the JSON
# report between BEGIN-REPORT/END-REPORT lines: agent/examples/erase_probe.rs, built with
#   cargo build -p molar-agent --example erase_probe --target x86_64-unknown-linux-musl
# KERNEL_TREE is an
# unpacked Debian linux-image package; without it the package cached by scripts/fetch-kernel
# is unpacked.
#
# Needs: qemu-system-x86_64, busybox (static), mkfs.ext4, dpkg. TCG only; no network device.
set -eu

PROBE=${1:?usage: erase-lab-qemu.sh ERASE_PROBE [KERNEL_TREE]}
KTREE=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ -z "$KTREE" ]; then
    deb=$("$HERE/../../scripts/fetch-kernel")
    dpkg -x "$deb" "$WORK/ktree"
    KTREE=$WORK/ktree
fi
KVER=$(ls "$KTREE/lib/modules" | head -n 1)
KERNEL=$(ls "$KTREE"/boot/vmlinuz-* | head -n 1)

# --- initramfs --------------------------------------------------------------------------
I=$WORK/initrd
mkdir -p "$I/bin" "$I/mods" "$I/proc" "$I/sys" "$I/dev" "$I/mnt" "$I/tmp"
cp "$(command -v busybox)" "$I/bin/busybox"
cp "$PROBE" "$I/bin/erase-probe"
n=10
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
    crct10dif_common crct10dif-pclmul crct10dif_generic crc-t10dif crc64 \
    crc64_rocksoft_generic crc64-rocksoft t10-pi nvme-core nvme scsi_common scsi_mod libata \
    libahci ahci sd_mod crc16 mbcache jbd2 crc32c_generic \
    libcrc32c ext4; do
    f=$(find "$KTREE/lib/modules/$KVER" -name "$m.ko" | head -n 1)
    if [ -n "$f" ]; then cp "$f" "$I/mods/$n-$m.ko"; fi
    n=$((n + 1))
done
cat >"$I/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /mods/*.ko; do insmod "$m" 2>/dev/null || true; done
for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -e /sys/block/nvme0n2 ] && [ -e /sys/block/vdc ] && [ -e /sys/block/sda ] && break
    sleep 1
done
stty -F /dev/ttyS1 raw -echo 115200 2>/dev/null || true
mount -t ext4 /dev/vda1 /mnt || echo "LAB: mount vda1 failed" >/dev/ttyS1
grep vda /proc/self/mountinfo >/dev/ttyS1
/bin/erase-probe vdc >/dev/ttyS1 2>&1
echo "LAB-DONE" >/dev/ttyS1
poweroff -f
EOF
chmod +x "$I/init"
(cd "$I" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$WORK/initrd.gz"

# --- disks ----------------------------------------------------------------------------------
random_fill() { head -c "$2" /dev/urandom >"$1"; }
# vda: MBR with one Linux partition from 1 MiB holding ext4 (mounted in the guest).
truncate -s 64M "$WORK/vda.img"
printf '\200\000\000\000\203\000\000\000\000\010\000\000\000\370\001\000' |
    dd of="$WORK/vda.img" bs=1 seek=446 conv=notrunc 2>/dev/null
printf '\125\252' | dd of="$WORK/vda.img" bs=1 seek=510 conv=notrunc 2>/dev/null
mkfs.ext4 -q -F -E offset=1048576 "$WORK/vda.img" 63M
random_fill "$WORK/vdb.img" 64M
random_fill "$WORK/vdc.img" 64M
random_fill "$WORK/ns1.img" 32M
random_fill "$WORK/ns2.img" 32M
random_fill "$WORK/sda.img" 32M
sum_before_vdc=$(sha256sum <"$WORK/vdc.img")

timeout 600 qemu-system-x86_64 -machine q35 -accel tcg -cpu max -m 512 -smp 2 -nographic \
    -nodefaults -no-reboot \
    -serial "file:$WORK/console.log" -serial "file:$WORK/ttyS1.log" \
    -kernel "$KERNEL" -initrd "$WORK/initrd.gz" -append "console=ttyS0 panic=-1 quiet" \
    -drive "file=$WORK/vda.img,if=none,id=vb0,format=raw" -device virtio-blk-pci,drive=vb0,serial=VDA \
    -drive "file=$WORK/vdb.img,if=none,id=vb1,format=raw,discard=unmap" \
    -device virtio-blk-pci,drive=vb1,serial=VDB \
    -drive "file=$WORK/vdc.img,if=none,id=vb2,format=raw" -device virtio-blk-pci,drive=vb2,serial=VDC \
    -drive "file=$WORK/ns1.img,if=none,id=ns1,format=raw" \
    -drive "file=$WORK/ns2.img,if=none,id=ns2,format=raw" \
    -device nvme,id=nvme0,serial=deadbeef \
    -device nvme-ns,drive=ns1,bus=nvme0,nsid=1 -device nvme-ns,drive=ns2,bus=nvme0,nsid=2 \
    -drive "file=$WORK/sda.img,if=none,id=sd0,format=raw" -device ide-hd,bus=ide.0,drive=sd0,serial=SATA01 \
    </dev/null >/dev/null 2>&1 || true

tr -d '\r' <"$WORK/ttyS1.log" >"$WORK/out.log"
if ! grep -q END-REPORT "$WORK/out.log"; then
    echo "erase-lab: no report from the guest; console and probe output:" >&2
    tail -n 30 "$WORK/console.log" >&2
    cat "$WORK/out.log" >&2
    exit 1
fi
sed -n "1,/BEGIN-REPORT/p" "$WORK/out.log" | grep -v -e BEGIN-REPORT -e "^progress" || true
grep '^progress' "$WORK/out.log" | tail -n 3
sed -n '/BEGIN-REPORT/,/END-REPORT/p' "$WORK/out.log" | sed '1d;$d' >"$WORK/report.json"
cat "$WORK/report.json"

fail=0
check() { if eval "$2"; then echo "ok: $1"; else echo "FAIL: $1"; fail=1; fi; }
zero() { cmp -s -n "$(stat -c %s "$1")" "$1" /dev/zero; }
check "nvme namespace 1 reads all zeros on the host" "zero '$WORK/ns1.img'"
check "nvme namespace 2 reads all zeros on the host" "zero '$WORK/ns2.img'"
check "virtio disk vdb reads all zeros on the host" "zero '$WORK/vdb.img'"
check "sata disk sda reads all zeros on the host" "zero '$WORK/sda.img'"
check "ata identify through SG_IO decoded the drive" "grep -q '^/dev/sda: ata model=\"QEMU HARDDISK\"' '$WORK/out.log'"
check "excluded disk vdc is byte-identical" "[ \"\$(sha256sum <'$WORK/vdc.img')\" = '$sum_before_vdc' ]"
check "mounted disk vda still holds its ext4" \
    "[ \"\$(od -An -tx1 -j \$((1048576 + 1024 + 56)) -N2 '$WORK/vda.img' | tr -d ' ')\" = 53ef ]"
check "nvme namespaces used nvme_format_user_data" "[ \$(grep -c '\"nvme_format_user_data\"' '$WORK/report.json') -eq 2 ]"
check "vda reported skipped: mounted" "grep -A2 '\"/dev/vda\"' '$WORK/report.json' | grep -q '\"mounted\"'"
check "vdc reported skipped: excluded" "grep -A2 '\"vdc\"\\|\"/dev/vdc\"' '$WORK/report.json' | grep -q '\"excluded\"'"
check "four devices erased, none failed" "grep -q '\"erased\": 4' '$WORK/report.json' && grep -q '\"failed\": 0' '$WORK/report.json'"
exit $fail
