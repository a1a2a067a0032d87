//! # cvmem-fuzz — fuzz target bodies for cvmem
//!
//! Each target takes arbitrary bytes and panics only when cvmem is wrong: a panic inside cvmem,
//! or an answer that disagrees with an independent reference.
//!
//! - [`tracker_oracle()`]: operation sequences on the core tracker, the dense oracle and the
//!   concurrent front, every answer compared;
//! - [`oplog_replay()`]: raw bytes to the op-log parser and the replay engine; [`oplog_tokens()`]:
//!   the same checks on op-log text assembled from the bytes;
//! - [`hypercall_decode()`]: register values to `MapGpaRange::decode` and (on Linux) the KVM
//!   crate's request decoders;
//! - [`gmem_oracle()`]: operation sequences on one guest_memfd's attributes and its dense
//!   oracle (KVM_SET_MEMORY_ATTRIBUTES2, host references), every answer compared;
//! - [`snapshot_restore()`]: hostile snapshots (JSON, or records from the bytes) to
//!   `Tracker::restore`: no panic, exact round trips, memory bounded by the snapshot's size.
//!
//! The same functions run three ways: `tests/corpus.rs` replays the checked-in corpus and a few
//! thousand deterministic inputs per target in `cargo test`; the `cvmem-fuzz` binary is a stable
//! random front end for longer runs; `fuzz/` wraps them for libFuzzer (`cargo fuzz`, nightly).
//! See `fuzz/README.md`.

pub mod gmem;
pub mod hypercall;
pub mod input;
pub mod mutate;
pub mod oplog;
pub mod snapshot;
pub mod tracker_oracle;

pub use gmem::gmem_oracle;
pub use hypercall::hypercall_decode;
pub use oplog::{oplog_replay, oplog_tokens};
pub use snapshot::snapshot_restore;
pub use tracker_oracle::tracker_oracle;

/// A fuzz target: its name (the corpus directory and the libFuzzer binary) and its body.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Name of the target.
    pub name: &'static str,
    /// The body: panics on a finding.
    pub run: fn(&[u8]),
    /// Longest input worth generating.
    pub max_len: usize,
}

/// Every target.
pub const TARGETS: [Target; 6] = [
    Target {
        name: "tracker_oracle",
        run: tracker_oracle,
        max_len: 512,
    },
    Target {
        name: "oplog_replay",
        run: oplog_replay,
        max_len: 4096,
    },
    Target {
        name: "oplog_tokens",
        run: oplog_tokens,
        max_len: 2048,
    },
    Target {
        name: "hypercall_decode",
        run: hypercall_decode,
        max_len: 96,
    },
    Target {
        name: "snapshot_restore",
        run: snapshot_restore,
        max_len: 2048,
    },
    Target {
        name: "gmem_oracle",
        run: gmem_oracle,
        max_len: 512,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.into_iter().find(|t| t.name == name)
}

/// The checked-in corpus of a target: `corpus/<name>/*` in this crate, sorted by file name.
pub fn corpus(name: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            files.push((name, std::fs::read(entry.path())?));
        }
    }
    files.sort();
    Ok(files)
}
