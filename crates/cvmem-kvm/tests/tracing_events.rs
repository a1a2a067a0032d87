//! The `tracing` events a VMM's subscriber receives: a span per conversion, an event for what
//! became of it (converted, refused, rolled back), and nothing recorded without a subscriber.
#![cfg(target_os = "linux")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cvmem::{Gfn, Gpa, Level, KVM_MEMORY_ATTRIBUTE_PRIVATE};
use cvmem_kvm::{Backing, ConversionListener, CvmMemory, ListenerError, MemoryEvent, SlotSpec};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level as TraceLevel, Metadata, Subscriber};

/// Records (level, message-ish text) of every event and counts spans.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(TraceLevel, String)>>,
    spans: AtomicUsize,
}

/// The subscriber: a handle on the shared recorder.
struct Handle(Arc<Recorder>);

impl Subscriber for Handle {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.0.spans.fetch_add(1, Ordering::Relaxed) as u64 + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut text = String::new();
        struct Fields<'a>(&'a mut String);
        impl tracing::field::Visit for Fields<'_> {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?} ", f.name(), v));
            }
        }
        e.record(&mut Fields(&mut text));
        self.0
            .events
            .lock()
            .unwrap()
            .push((*e.metadata().level(), text));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct Refuse;
impl ConversionListener for Refuse {
    fn name(&self) -> &str {
        "refuse"
    }
    fn notify(&self, e: &MemoryEvent<'_>) -> Result<(), ListenerError> {
        if e.to == cvmem::Kind::Shared && e.ranges.iter().any(|r| r.range.start == Gfn(0x100)) {
            return Err(ListenerError {
                listener: "refuse".into(),
                message: "no".into(),
            });
        }
        Ok(())
    }
}

#[test]
fn conversions_failures_and_rollbacks_are_traced() {
    let recorder = Arc::new(Recorder::default());
    tracing::subscriber::with_default(Handle(Arc::clone(&recorder)), || {
        let m = CvmMemory::detached();
        m.add_slot(&SlotSpec {
            slot: 0,
            gpa: Gpa(0),
            size: 4 << 20,
            backing: Backing::Anonymous,
            max_level: Level::G1,
        })
        .unwrap();
        m.set_attributes(Gpa(0), 4 << 20, KVM_MEMORY_ATTRIBUTE_PRIVATE)
            .unwrap();
        assert!(m.set_attributes(Gpa(0x1001), 4096, 0).is_err());
        m.add_listener(Arc::new(Refuse)).unwrap();
        assert!(m.set_attributes(Gpa(0x10_0000), 4096, 0).is_err());
        assert_eq!(m.stats().rolled_back, 1);
    });
    let events = recorder.events.lock().unwrap().clone();
    let has =
        |level: TraceLevel, text: &str| events.iter().any(|(l, t)| *l == level && t.contains(text));
    assert!(has(TraceLevel::DEBUG, "memslot changed"), "{events:?}");
    assert!(has(TraceLevel::DEBUG, "converted"), "{events:?}");
    assert!(has(TraceLevel::DEBUG, "refused"), "{events:?}");
    assert!(has(TraceLevel::WARN, "rolled back"), "{events:?}");
    assert!(recorder.spans.load(Ordering::Relaxed) >= 2);
}
