//! Assembles the guest program `guest/guest.S` into a flat binary with the system assembler.
//!
//! The numbers the guest uses come from `src/abi.rs`: every `pub const NAME: u64 = LITERAL;` line
//! is passed to the assembler as `--defsym NAME=LITERAL`. When the target is
//! not x86-64 Linux, or `as`/`objcopy` are missing, the crate is built without a guest
//! (`cfg(cvmem_no_guest)`) and running one returns an error that says why.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cvmem_no_guest)");
    println!("cargo::rerun-if-changed=guest/guest.S");
    println!("cargo::rerun-if-changed=src/abi.rs");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os != "linux" || arch != "x86_64" {
        println!("cargo::rustc-cfg=cvmem_no_guest");
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("guest.o");
    let bin = out.join("guest.bin");
    let mut as_cmd = Command::new("as");
    as_cmd.arg("--64").arg("-o").arg(&obj);
    let abi = std::fs::read_to_string("src/abi.rs").expect("src/abi.rs is part of the crate");
    let symbols = abi_constants(&abi);
    for (name, value) in &symbols {
        as_cmd.arg(format!("--defsym={name}={value:#x}"));
    }
    as_cmd.arg("guest/guest.S");
    if let Err(why) = run(as_cmd).and_then(|()| {
        let mut objcopy = Command::new("objcopy");
        objcopy
            .args(["-O", "binary", "-j", ".text"])
            .arg(&obj)
            .arg(&bin);
        run(objcopy)
    }) {
        println!("cargo::warning=cvmem-kvm: guest program not built ({why}); KVM runs will fail");
        println!("cargo::rustc-cfg=cvmem_no_guest");
        return;
    }
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(u64::MAX);
    let max = symbols
        .iter()
        .find(|(n, _)| n == "CODE_MAX")
        .map_or(0, |s| s.1);
    assert!(
        size <= max,
        "guest program of {size} bytes exceeds CODE_MAX ({max})"
    );
}

/// Every `pub const NAME: u64 = LITERAL;` of `src`, with decimal or `0x` literals.
fn abi_constants(src: &str) -> Vec<(String, u64)> {
    src.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub const ")?;
            let (name, rest) = rest.split_once(": u64 = ")?;
            let lit = rest.strip_suffix(';')?.replace('_', "");
            let value = match lit.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok()?,
                None => lit.parse().ok()?,
            };
            Some((name.to_string(), value))
        })
        .collect()
}

fn run(mut cmd: Command) -> Result<(), String> {
    let name = format!("{:?}", cmd.get_program());
    let output = cmd.output().map_err(|e| format!("{name}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
