//! Declares `cfg(loom)`, set by `RUSTFLAGS="--cfg loom"` to run the loom model tests.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
