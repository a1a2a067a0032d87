//! Every fuzz target on its checked-in corpus (`corpus/<target>/`, including past findings) and
//! on deterministic pseudo-random inputs: random bytes and mutations of the corpus.

use cvmem_fuzz::mutate::{mutate, random_bytes, Rng};
use cvmem_fuzz::{corpus, target, Target};

fn run(t: Target, generated: usize) {
    let seeds = corpus(t.name).expect("the corpus directory exists");
    assert!(!seeds.is_empty(), "{}: empty corpus", t.name);
    for (file, data) in &seeds {
        eprintln!("{}: {file}", t.name);
        (t.run)(data);
    }
    let mut rng = Rng::new(0x5eed ^ t.name.len() as u64);
    for i in 0..generated {
        let data = if i % 3 == 0 {
            let len = rng.below(t.max_len + 1);
            random_bytes(&mut rng, len)
        } else {
            let seed = &seeds[rng.below(seeds.len())].1;
            let other = &seeds[rng.below(seeds.len())].1;
            mutate(&mut rng, seed, other, t.max_len)
        };
        (t.run)(&data);
    }
}

fn named(name: &str) -> Target {
    target(name).expect("a known target")
}

#[test]
fn tracker_oracle() {
    run(named("tracker_oracle"), 600);
}

#[test]
fn oplog_replay() {
    run(named("oplog_replay"), 3000);
}

#[test]
fn oplog_tokens() {
    run(named("oplog_tokens"), 3000);
}

#[test]
fn hypercall_decode() {
    run(named("hypercall_decode"), 20_000);
}

#[test]
fn snapshot_restore() {
    run(named("snapshot_restore"), 3000);
}

#[test]
fn gmem_oracle() {
    run(named("gmem_oracle"), 3000);
}
