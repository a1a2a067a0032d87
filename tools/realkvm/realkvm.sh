#!/usr/bin/env bash
# realkvm.sh — cvmem's harness for a real, attribute-capable Linux KVM.
#
# This machine's /dev/kvm is paravirtualised (no memory attributes, no SW_PROTECTED VMs, no
# hypercall exits). A Debian kernel booted under QEMU in pure emulation (TCG, an EPYC CPU with
# SVM + NPT) has all of them once kvm.ko and kvm-amd.ko are rebuilt with
# CONFIG_KVM_SW_PROTECTED_VM=y. This script prepares that once (cached outside the clone) and runs
# project binaries inside it.
#
#   tools/realkvm/realkvm.sh prepare         packages, kernel, rebuilt modules, kernel selftests
#   tools/realkvm/realkvm.sh run [-f FILE]... [-t SECONDS] -- 'COMMAND LINE'
#                                            boot, run the command line (busybox sh), return its rc
#   tools/realkvm/realkvm.sh ci              the CI step: build cvmem's KVM tests and the CLI,
#                                            run them and the kernel's own selftests inside
#
# CVMEM_REALKVM_KERNEL picks the kernel: 6.12 (default; Debian 12's, from the machine's own apt
# sources) or 7.3 (Debian 13's trixie-backports, fetched through a private apt state built from
# the machine's own mirror URI: the machine's package state is untouched).
# Cache: $CVMEM_REALKVM_DIR (default /var/tmp/cvmem-realkvm). Exit status 3 from `prepare`
# means the tools cannot be had here (no apt, no QEMU): `ci` then prints a SKIP line and passes.
set -euo pipefail

DIR=${CVMEM_REALKVM_DIR:-/var/tmp/cvmem-realkvm}
KSERIES=${CVMEM_REALKVM_KERNEL:-6.12}
case "$KSERIES" in
6.12)
	# The paths of the first (6.12-only) harness, so that warm caches stay warm.
	CACHE=$DIR/cache SRC=$DIR/linux ST_ARCH=x86_64 ;;
7.3)
	CACHE=$DIR/k7.3/cache SRC=$DIR/k7.3/linux ST_ARCH=x86 ;;
*) echo "CVMEM_REALKVM_KERNEL must be 6.12 or 7.3, not '$KSERIES'" >&2; exit 2 ;;
esac
LOG=$CACHE/build.log
# 7.3 moved the x86 selftests from x86_64/ to x86/; guest_memfd_test is arch-independent.
TESTS="$ST_ARCH/private_mem_conversions_test $ST_ARCH/private_mem_kvm_exits_test"
[ "$KSERIES" = 6.12 ] || TESTS="$TESTS guest_memfd_test"
say() { echo "[realkvm $KSERIES] $*" >&2; }

# apt with the machine's own sources (6.12) or with a private state that adds Debian 13's
# trixie-backports from the machine's own mirror (7.3).
APT_DIR=$DIR/k7.3/apt
apt_opts() {
	[ "$KSERIES" = 6.12 ] && return 0
	printf '%s\n' -o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$APT_DIR/sources" \
		-o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
}
apt_private_sources() {
	[ "$KSERIES" = 6.12 ] && return 0
	[ -s "$APT_DIR/sources/backports.sources" ] && return 0
	local uri
	uri=$({ sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null
		sed -n 's/^deb \(\[[^]]*\] \)\?\([^ ]*\) .*/\2/p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
	} | tr ' ' '\n' | grep -E '/debian/?$' | head -1)
	[ -n "$uri" ] || { say "no Debian mirror among the machine's apt sources"; return 1; }
	mkdir -p "$APT_DIR/sources" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
	printf 'Types: deb\nURIs: %s\nSuites: trixie-backports\nComponents: main\nSigned-By: %s\n' \
		"$uri" /usr/share/keyrings/debian-archive-keyring.gpg >"$APT_DIR/sources/backports.sources.tmp"
	mv "$APT_DIR/sources/backports.sources.tmp" "$APT_DIR/sources/backports.sources"
}
apt_q() { local o; mapfile -t o < <(apt_opts); "$@" "${o[@]}"; }

# The kernel this harness uses: Debian's newest amd64 image of the series (pinned after the
# first run).
kernel_version() {
	if [ ! -s "$CACHE/KVER" ]; then
		local re
		if [ "$KSERIES" = 6.12 ]; then
			re='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$'
		else
			re='^linux-binary-unsigned-7\.3\.[0-9]+\+deb13-amd64$'
		fi
		apt_private_sources || return 1
		apt_q apt-cache show "linux-source-$KSERIES" >/dev/null 2>&1 || apt_q apt-get update -qq
		apt_q apt-cache search --names-only "$re" | awk '{print $1}' |
			sed 's/^linux-image-//; s/^linux-binary-unsigned-//; s/-amd64\(-unsigned\)\?$//' |
			sort -V | tail -1 >"$CACHE/KVER"
		[ -s "$CACHE/KVER" ] || { rm -f "$CACHE/KVER"; return 1; }
	fi
	cat "$CACHE/KVER"
}

# Where the extracted packages keep the image and the modules (Debian 13 moved both under
# /usr/lib/modules).
kernel_image() {
	if [ "$KSERIES" = 6.12 ]; then echo "$CACHE/root/boot/vmlinuz-$1"; else echo "$CACHE/root/usr/lib/modules/$1/vmlinuz.unsigned"; fi
}
module_dir() {
	if [ "$KSERIES" = 6.12 ]; then echo "$CACHE/root/lib/modules/$1/kernel"; else echo "$CACHE/root/usr/lib/modules/$1/kernel"; fi
}

prepare() {
	mkdir -p "$CACHE"
	local pkgs=(qemu-system-x86 busybox-static cpio build-essential gcc-12 xz-utils flex bison
		libelf-dev libssl-dev bc dwarves file) need=() p
	for p in "${pkgs[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
	done
	if [ ${#need[@]} -gt 0 ]; then
		command -v apt-get >/dev/null || { say "no apt-get to install ${need[*]}"; return 3; }
		say "installing ${need[*]}"
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends "${need[@]}"; } >>"$LOG" 2>&1 ||
			{ say "cannot install ${need[*]} (see $LOG)"; return 3; }
	fi
	local kv krel upv root
	kv=$(kernel_version) || { say "apt knows no Debian $KSERIES amd64 kernel image"; return 3; }
	krel=$kv-amd64 upv=${kv%%+*} root=$CACHE/root
	local debs=("linux-headers-$krel" "linux-headers-$kv-common" "linux-kbuild-$kv")
	if [ "$KSERIES" = 6.12 ]; then
		debs+=("linux-image-$krel-unsigned")
	else
		debs+=("linux-binary-unsigned-$krel" "linux-modules-$krel")
	fi
	(
		cd "$CACHE"
		for p in "${debs[@]}"; do
			ls "${p}"_*.deb >/dev/null 2>&1 || { say "downloading $p"; apt_q apt-get download "$p" >>"$LOG" 2>&1; }
		done
		if ! ls linux-source-"$KSERIES"_"$upv"-*.deb >/dev/null 2>&1; then
			local sv
			sv=$(apt_q apt-cache madison "linux-source-$KSERIES" | awk '{print $3}' | grep "^$upv-" | head -1)
			say "downloading linux-source-$KSERIES=$sv"
			apt_q apt-get download "linux-source-$KSERIES=$sv" >>"$LOG" 2>&1
		fi
	) || { say "kernel packages could not be downloaded (see $LOG)"; return 3; }
	if [ ! -e "$root/.done-$kv" ]; then
		rm -rf "$root" && mkdir -p "$root"
		for p in "${debs[@]}"; do
			dpkg-deb -x "$(ls "$CACHE/${p}"_*.deb | head -1)" "$root"
		done
		touch "$root/.done-$kv"
	fi
	if [ ! -e "$SRC/.done-$kv" ]; then
		say "extracting linux-source-$KSERIES $upv"
		rm -rf "$SRC" "$SRC.tmp" && mkdir -p "$SRC.tmp"
		dpkg-deb --fsys-tarfile "$CACHE"/linux-source-"$KSERIES"_"$upv"-*.deb |
			tar -xO --wildcards "*/linux-source-$KSERIES.tar.xz" | tar -xJ -C "$SRC.tmp"
		mv "$SRC.tmp/linux-source-$KSERIES" "$SRC" && rmdir "$SRC.tmp"
		touch "$SRC/.done-$kv"
	fi
	local hdr=$root/usr/src/linux-headers-$krel
	# Debian's release string, bookworm's gcc-12 (Debian 13 built 7.3 with gcc-14, which this
	# machine's suite lacks) and no Rust.
	local kmake=(make -C "$SRC" CC=x86_64-linux-gnu-gcc-12 KERNELRELEASE="$krel" RUSTC=/nonexistent/rustc)
	if [ ! -e "$SRC/.kvm-done" ]; then
		say "rebuilding kvm.ko and kvm-amd.ko with CONFIG_KVM_SW_PROTECTED_VM=y (a few minutes)"
		cp "$hdr/.config" "$hdr/Module.symvers" "$SRC/"
		"$SRC"/scripts/config --file "$SRC/.config" --enable KVM_SW_PROTECTED_VM \
			--set-str SYSTEM_TRUSTED_KEYS "" --set-str SYSTEM_REVOCATION_KEYS ""
		"${kmake[@]}" olddefconfig >>"$LOG" 2>&1
		# Only that option may differ from Debian's config, beside what the compiler decides
		# (another gcc, no Rust: compiler capability and Rust-only symbols): anything else
		# changes struct module and the rebuilt modules no longer load.
		local d
		d=$(diff <(grep '^CONFIG_' "$hdr/.config" | sort) <(grep '^CONFIG_' "$SRC/.config" | sort) |
			grep '^[<>]' | grep -vE 'CONFIG_(KVM_SW_PROTECTED_VM|SYSTEM_TRUSTED_KEYS|SYSTEM_REVOCATION_KEYS)=' |
			grep -vE "$(compiler_symbols)" || true)
		[ -z "$d" ] || { say "the config differs from Debian's beyond KVM_SW_PROTECTED_VM: $d"; return 1; }
		"${kmake[@]}" -j"$(nproc)" modules_prepare >>"$LOG" 2>&1
		"${kmake[@]}" -j"$(nproc)" M=arch/x86/kvm CONFIG_KVM_INTEL=n modules >>"$LOG" 2>&1
		touch "$SRC/.kvm-done"
	fi
	local st=$SRC/tools/testing/selftests/kvm t missing=0
	for t in $TESTS; do [ -x "$st/$t" ] || missing=1; done
	if [ "$missing" = 1 ]; then
		say "building the kernel's KVM selftests: $TESTS"
		[ -e "$SRC/usr/include/linux/kvm.h" ] || "${kmake[@]}" -j"$(nproc)" headers >>"$LOG" 2>&1
		make -C "$st" -j"$(nproc)" TARGET_ARCH=-static "TEST_GEN_PROGS_$ST_ARCH=$TESTS" \
			"TEST_PROGS_$ST_ARCH=" "TEST_GEN_PROGS_EXTENDED_$ST_ARCH=" >>"$LOG" 2>&1
	fi
	echo "$krel" >"$CACHE/KREL"
}

# The config symbols another toolchain sets differently (6.12: none — Debian built it with
# gcc-12 too): compiler, assembler, linker and pahole versions and capabilities, Rust and the
# drivers only Rust builds, and the host openssl's ML-DSA support (Debian signs without it).
compiler_symbols() {
	if [ "$KSERIES" = 6.12 ]; then
		echo '^$'
	else
		echo 'CONFIG_(CC_|GCC_|AS_VERSION|LD_VERSION|PAHOLE_VERSION|RUST|BINDGEN_|AMCC_QT2025_PHY|AX88796B_RUST_PHY|DRM_PANIC_SCREEN_QR|OPENSSL_SUPPORTS_ML_DSA)'
	fi
}

# run [-f HOST[:GUEST]]... [-t SECONDS] [-m MEM] [-g PAGES] -- COMMAND LINE
# -g reserves PAGES hugetlbfs 1G pages at boot (for kvm-diff's backing=1G slots).
run() {
	local timeout=900 mem=4G files=() gigapages=0
	while [ $# -gt 0 ]; do
		case "$1" in
		-f) files+=("$2"); shift 2 ;;
		-t) timeout=$2; shift 2 ;;
		-m) mem=$2; shift 2 ;;
		-g) gigapages=$2; shift 2 ;;
		--) shift; break ;;
		*) break ;;
		esac
	done
	local krel root ir
	krel=$(cat "$CACHE/KREL") root=$CACHE/root
	ir=$(mktemp -d "$CACHE/initramfs.XXXXXX")
	# Per-run files, so that runs from two clones can share the cache.
	trap 'rm -rf "$ir" "$ir.gz"; trap - RETURN' RETURN
	mkdir -p "$ir"/{bin,proc,sys,dev,tmp,opt/bin,opt/kselftests,lib/modules}
	cp /bin/busybox "$ir/bin/busybox"
	local t n
	for t in $TESTS; do
		n=$(basename "$t")
		cp "$SRC/tools/testing/selftests/kvm/$t" "$ir/opt/kselftests/$n"
		# The selftests open their own ELF through argv[0]: start them by absolute path.
		printf '#!/bin/sh\nexec /opt/kselftests/%s "$@"\n' "$n" >"$ir/opt/bin/$n"
		chmod +x "$ir/opt/bin/$n"
	done
	cp "$SRC/arch/x86/kvm/kvm.ko" "$SRC/arch/x86/kvm/kvm-amd.ko" "$ir/lib/modules/"
	local mods
	mods=$(module_dir "$krel")
	xz -dc "$mods/virt/lib/irqbypass.ko.xz" >"$ir/lib/modules/irqbypass.ko"
	xz -dc "$mods/drivers/crypto/ccp/ccp.ko.xz" >"$ir/lib/modules/ccp.ko"
	local f host guest lib
	for f in "${files[@]+"${files[@]}"}"; do
		host=${f%%:*} guest=${f#*:}
		[ "$guest" = "$f" ] && guest=/opt/bin/$(basename "$host")
		mkdir -p "$ir$(dirname "$guest")" && cp -L "$host" "$ir$guest"
		if file -L "$host" | grep -q 'dynamically linked'; then
			for lib in $(ldd "$host" | grep -o '/[^ ]*'); do
				[ -e "$ir$lib" ] || { mkdir -p "$ir$(dirname "$lib")"; cp -L "$lib" "$ir$lib"; }
			done
		fi
	done
	printf '%s\n' "$*" >"$ir/cmd.sh"
	cat >"$ir/init" <<'EOT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/opt/bin HOME=/tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
for m in irqbypass ccp kvm kvm-amd; do insmod /lib/modules/$m.ko || echo "REALKVM: insmod $m failed"; done
echo "REALKVM: $(uname -r), /dev/kvm: $(ls /dev/kvm 2>&1), tdp_mmu=$(cat /sys/module/kvm/parameters/tdp_mmu 2>/dev/null), 1G pages $(cat /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages 2>/dev/null || echo 0), THP $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
cd /tmp
sh /cmd.sh
echo "REALKVM-EXIT=$?"
poweroff -f
EOT
	chmod +x "$ir/init"
	(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$ir.gz"
	say "booting $krel under QEMU TCG (EPYC + SVM + NPT), timeout ${timeout}s"
	local out=$CACHE/console-$$.log rc
	set +e
	# One vCPU on one TCG thread: multi-threaded TCG now and then oopses the guest kernel (an
	# int3 left by live code patching), and the tests inside need no parallelism.
	timeout "$timeout" qemu-system-x86_64 -accel tcg,thread=single -machine q35 \
		-cpu EPYC,+svm,+npt,+vgif,+svme-addr-chk -smp 1 -m "$mem" \
		-nographic -no-reboot -nodefaults -serial stdio -display none \
		-kernel "$(kernel_image "$krel")" -initrd "$ir.gz" \
		-append "console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off hugepagesz=1G hugepages=$gigapages" </dev/null \
		2> >(grep --line-buffered -v "TCG doesn't support requested feature" >&2) | tee "$out"
	rc=${PIPESTATUS[0]}
	set -e
	[ "$rc" = 124 ] && { say "timed out after ${timeout}s"; return 124; }
	rc=$(grep -ao 'REALKVM-EXIT=[0-9]*' "$out" | tail -1 | cut -d= -f2)
	return "${rc:-125}"
}

# The CI step on every kernel: 6.12, then 7.3 (CVMEM_REALKVM_KERNELS overrides the list).
ci_all() {
	local k
	for k in ${CVMEM_REALKVM_KERNELS:-6.12 7.3}; do
		echo "[realkvm] the CI step on Linux $k" >&2
		local t0=$SECONDS
		CVMEM_REALKVM_KERNEL=$k "$0" ci-one
		echo "[realkvm] Linux $k: $((SECONDS - t0)) s" >&2
	done
}

# The CI step: cvmem on the real KVM, next to the kernel's own conversion selftests.
ci() {
	local rc=0
	prepare || rc=$?
	if [ "$rc" = 3 ]; then
		echo "SKIP real-KVM step: the packages or QEMU cannot be had on this machine (see above)"
		return 0
	fi
	[ "$rc" = 0 ] || return "$rc"
	local root
	root=$(cd "$(dirname "$0")/../.." && pwd)
	cd "$root"
	# The same profiles as the unit tests before this step, so little is rebuilt.
	cargo build -p cvmem-cli >&2
	cargo build -p cvmem-kvm --example vmm >&2
	local tests
	tests=$(cargo test -p cvmem-kvm-rig --test kvm_guest --no-run --message-format=json 2>/dev/null |
		grep -o '"executable":"[^"]*kvm_guest-[^"]*"' | cut -d'"' -f4 | head -1)
	[ -n "$tests" ] || { say "no kvm_guest test binary"; return 1; }
	local fx=crates/cvmem-cli/tests/fixtures
	# 2 GiB more than the default for two 1G pages that kvm-diff's backing=1G slots take.
	local in_place=0
	[ "$KSERIES" = 6.12 ] || in_place=1
	run -t 1500 -m 6G -g 2 -f target/debug/cvmem -f "$tests:/opt/bin/kvm_guest" -f target/debug/examples/vmm \
		-f "$fx/basic.oplog:/work/fixtures/basic.oplog" -f "$fx/mmu.oplog:/work/fixtures/mmu.oplog" \
		-f "crates/cvmem-kvm-rig/tests/fixtures/slots.oplog:/work/fixtures/slots.oplog" \
		-f "crates/cvmem-kvm-rig/tests/fixtures/backing.oplog:/work/fixtures/backing.oplog" \
		-f "crates/cvmem-kvm-rig/tests/fixtures/gmem-bind.oplog:/work/fixtures/gmem-bind.oplog" -- "REALKVM_IN_PLACE=$in_place"'
set -e
private_mem_conversions_test
private_mem_conversions_test -n 2 -m 2
private_mem_kvm_exits_test
if [ -x /opt/bin/guest_memfd_test ]; then guest_memfd_test; fi
vmm | tee /tmp/vmm.out
grep -q "^hypercall exit" /tmp/vmm.out
cvmem kvm-run --workload selftest
cvmem kvm-run --workload boot
CVMEM_FIXTURES=/work/fixtures kvm_guest --test-threads 1 --show-output 2>&1 | tee /tmp/kvm-guest.out | grep -E "^(test |note: (attributes|forced)|skipped)"
grep -q "^test result: ok" /tmp/kvm-guest.out
# A conversion forced through KVM_SET_MEMORY_ATTRIBUTES2 is refused by a kernel without it.
grep -q "^note: forced KVM_SET_MEMORY_ATTRIBUTES2" /tmp/kvm-guest.out
if [ "${REALKVM_IN_PLACE:-0}" = 1 ]; then
  # A default VM whose MMAP|INIT_SHARED guest_memfd is the memslot'"'"'s only memory (Linux 6.18+).
  CVMEM_KVM_VM_TYPE=default CVMEM_FIXTURES=/work/fixtures kvm_guest --test-threads 1 --show-output 2>&1 | tee /tmp/in-place.out | grep -E "^(note: path|test result)"
  grep -q "^test result: ok" /tmp/in-place.out
  grep -q "^note: path: default VM.*guest_memfd (in place)" /tmp/in-place.out
fi
cvmem kvm-diff /work/fixtures/basic.oplog /work/fixtures/mmu.oplog /work/fixtures/slots.oplog /work/fixtures/backing.oplog /work/fixtures/gmem-bind.oplog --random 12000
'
}

cmd=${1:-}
shift || true
case "$cmd" in
prepare) prepare ;;
run) run "$@" ;;
ci) ci_all ;;
ci-one) ci ;;
*) echo "usage: $0 prepare | run [-f FILE[:PATH]]... [-t S] [-m MEM] -- 'CMD' | ci | ci-one" >&2; exit 2 ;;
esac
