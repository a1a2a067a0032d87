//! `MemoryQuery` under a conversion storm: device threads ask while vCPU threads convert.
//! Every answer must come from one committed state (a conversion is never seen half done), and
//! a reader must get answers while a conversion is in progress — it never waits for one.
#![cfg(target_os = "linux")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cvmem::{Access, Gpa, Kind, Level, MaxLevel, KVM_MEMORY_ATTRIBUTE_PRIVATE, PAGE_SIZE};
use cvmem_kvm::{
    Backing, ConversionListener, CvmMemory, ListenerError, MemoryEvent, RangeKind, SlotSpec,
};

const SLOT_SIZE: u64 = 64 << 20;
/// Conversions change aligned blocks of this many bytes, so a reader that sees a block mixed
/// has seen half a conversion.
const BLOCK: u64 = 64 * PAGE_SIZE;
/// Reader threads of the storm.
const READERS: u64 = 2;
/// Answers the readers must have given before the storm may end: however the threads are
/// scheduled (a busy machine can run the whole storm before a reader starts), they ran during it.
const MIN_ANSWERS: u64 = 1_000;

fn memory() -> CvmMemory {
    let m = CvmMemory::detached();
    m.add_slot(&SlotSpec {
        slot: 0,
        gpa: Gpa(0),
        size: SLOT_SIZE,
        backing: Backing::Anonymous,
        max_level: Level::G1,
    })
    .unwrap();
    m
}

#[test]
fn readers_see_whole_conversions_during_a_storm() {
    let memory = memory();
    let stop = AtomicBool::new(false);
    let answers = AtomicU64::new(0);
    let started = AtomicU64::new(0);
    std::thread::scope(|s| {
        for seed in 0..READERS {
            let query = memory.query();
            let (stop, answers, started) = (&stop, &answers, &started);
            s.spawn(move || {
                started.fetch_add(1, Ordering::Release);
                let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let block = (x % (SLOT_SIZE / BLOCK)) * BLOCK;
                    let kind = query.range_kind(Gpa(block), BLOCK).unwrap();
                    assert_ne!(kind, RangeKind::Mixed, "half a conversion at {block:#x}");
                    // A shared access to a shared page maps (at 2M: blocks are smaller); a
                    // private one is a memory fault (anonymous memory cannot back it). The
                    // two answers agree when no conversion committed in between.
                    let before = query.generation();
                    let private = query.is_private(Gpa(block + PAGE_SIZE));
                    let level = query.max_level(Gpa(block + PAGE_SIZE), Access::Shared);
                    if query.generation() == before {
                        assert_eq!(
                            matches!(level, MaxLevel::Level(_)),
                            !private,
                            "{level:?} for a page that is private: {private}"
                        );
                    }
                    answers.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // A deadline instead of a hang if a reader fails (its panic is reported at the join).
        let deadline = Instant::now() + Duration::from_secs(60);
        while started.load(Ordering::Acquire) < READERS && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut conversions = 0;
        while conversions < 20_000
            || (answers.load(Ordering::Relaxed) < MIN_ANSWERS && Instant::now() < deadline)
        {
            conversions += 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let block = (x % (SLOT_SIZE / BLOCK)) * BLOCK;
            let attributes = if x & 1 == 0 {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            };
            memory
                .set_attributes(Gpa(block), BLOCK, attributes)
                .unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let answers = answers.load(Ordering::Relaxed);
    assert!(
        answers >= MIN_ANSWERS,
        "the readers answered {answers} times during the storm"
    );
}

/// A listener that holds the conversion in progress (between the start of its invalidation
/// and the store of the new attributes) until the test lets it go.
struct Holder {
    entered: Mutex<Sender<()>>,
    release: Mutex<Receiver<()>>,
}

impl ConversionListener for Holder {
    fn name(&self) -> &str {
        "holder"
    }
    fn notify(&self, e: &MemoryEvent<'_>) -> Result<(), ListenerError> {
        if e.to == Kind::Private {
            self.entered.lock().unwrap().send(()).unwrap();
            let released = self
                .release
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(20));
            assert!(
                released.is_ok(),
                "the reader never answered during the conversion"
            );
        }
        Ok(())
    }
}

#[test]
fn a_reader_answers_while_a_conversion_is_in_progress() {
    let memory = memory();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    memory
        .add_listener(Arc::new(Holder {
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
        }))
        .unwrap();
    let query = memory.query();
    std::thread::scope(|s| {
        let converting = s.spawn(|| {
            memory
                .set_attributes(Gpa(0), 2 << 20, KVM_MEMORY_ATTRIBUTE_PRIVATE)
                .unwrap()
        });
        entered.recv_timeout(Duration::from_secs(20)).unwrap();
        // Mid-conversion: the reader gets the committed (old) state at once.
        let generation = query.generation();
        assert!(!query.is_private(Gpa(0)));
        assert_eq!(
            query.range_kind(Gpa(0), 2 << 20).unwrap(),
            RangeKind::Shared
        );
        assert_eq!(
            query.max_level(Gpa(0), Access::Shared),
            MaxLevel::Level(Level::M2)
        );
        assert_eq!(query.generation(), generation);
        release.send(()).unwrap();
        let done = converting.join().unwrap();
        assert_eq!(done.changed_pages, 512);
    });
    assert!(query.is_private(Gpa(0)));
    assert_eq!(
        query.range_kind(Gpa(0), 2 << 20).unwrap(),
        RangeKind::Private
    );
}
