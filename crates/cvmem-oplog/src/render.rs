//! The one rendering of an [`Outcome`]: a line of text for people, and (feature `json`) the JSON
//! object of the spec's `--json` output. `cvmem replay` and `cvmem kvm-run` print through these.

use alloc::format;
use alloc::string::{String, ToString};

use cvmem::mmu::FaultOutcome;
use cvmem::{MaxLevel, SlotChange};

use crate::exec::Outcome;
use crate::op::Op;

/// The op-log name of a fault-path answer: `4K`, `2M`, `1G`, `no-slot`, `memory-fault`.
pub fn max_level_name(m: &MaxLevel) -> &'static str {
    match m {
        MaxLevel::Level(l) => l.name(),
        MaxLevel::NoSlot => "no-slot",
        MaxLevel::MemoryFault(_) => "memory-fault",
    }
}

/// What an outcome says, for people (`2M`, `mapped 4K`, `EINVAL: …`), or `None` when there is
/// nothing to say (a change that succeeded).
pub fn result_text(outcome: &Outcome) -> Option<String> {
    Some(match outcome {
        Outcome::Done => return None,
        Outcome::Slot(SlotChange::Moved { old }) => {
            format!("moved from {}", old.start.gpa())
        }
        Outcome::Slot(SlotChange::DirtyLog { enabled }) => {
            format!("dirty-log {}", if *enabled { "on" } else { "off" })
        }
        Outcome::Slot(_) => return None,
        Outcome::Error(e) => e.to_string(),
        Outcome::Query(m) => max_level_name(m).to_string(),
        Outcome::Fault(FaultOutcome::Mapped { level }) => format!("mapped {level}"),
        Outcome::Fault(f) => f.name().to_string(),
        Outcome::Accept(a) => a.name().to_string(),
        Outcome::Gmem(id) => format!("file {}", id.0),
        Outcome::FaultRange(r) => {
            let mut s = format!(
                "mapped 4K {} 2M {} 1G {}, spurious {}, memory-fault {}, no-slot {}",
                r.mapped.k4, r.mapped.m2, r.mapped.g1, r.spurious, r.memory_fault, r.no_slot
            );
            if r.retry != 0 {
                s += &format!(", retry {}", r.retry);
            }
            s
        }
        Outcome::Overridden { layout, recovery } => {
            format!("overridden: the model runs {layout} recovery={recovery}")
        }
    })
}

/// One aligned line for people: line number, keyword, the operation, what it did; `None` when
/// there is nothing to say.
pub fn text(line: usize, op: &Op, outcome: &Outcome) -> Option<String> {
    let result = result_text(outcome)?;
    let what = match op {
        Op::Query { gpa, access } | Op::Fault { gpa, access } => {
            format!("{gpa:#014x} {:<7}", access.name())
        }
        _ => op.to_string(),
    };
    Some(format!("{line:>6}  {:<12} {what:<40} {result}", op.name()))
}

/// The spec's JSON object for one outcome, or `None` when the spec prints nothing for it
/// (changes that succeeded, memslot lines included).
#[cfg(feature = "json")]
pub fn json(line: usize, op: &Op, outcome: &Outcome) -> Option<serde_json::Value> {
    use serde_json::{json, Map, Value};
    let levels = |c: &cvmem::mmu::LevelCounts| json!({"4K": c.k4, "2M": c.m2, "1G": c.g1});
    let mut obj = Map::new();
    obj.insert("line".into(), json!(line));
    obj.insert("op".into(), json!(op.name()));
    // The address a result is about (not repeated for errors: their message says it).
    if !outcome.is_error() {
        match *op {
            Op::Query { gpa, access } | Op::Fault { gpa, access } => {
                obj.insert("gpa".into(), json!(gpa.0));
                obj.insert("access".into(), json!(access.name()));
            }
            Op::Accept { gpa, level } => {
                obj.insert("gpa".into(), json!(gpa.0));
                obj.insert("level".into(), json!(level.name()));
            }
            _ => {}
        }
    }
    match outcome {
        Outcome::Done | Outcome::Slot(_) => return None,
        Outcome::Error(e) => {
            obj.insert("error".into(), json!(e.errno));
            obj.insert("message".into(), json!(e.message));
        }
        Outcome::Fault(f) => {
            obj.insert("result".into(), json!(f.name()));
            if let FaultOutcome::Mapped { level } = f {
                obj.insert("level".into(), json!(level.name()));
            }
        }
        Outcome::FaultRange(r) => {
            obj.insert("mapped".into(), levels(&r.mapped));
            obj.insert("spurious".into(), json!(r.spurious));
            obj.insert("memory-fault".into(), json!(r.memory_fault));
            obj.insert("no-slot".into(), json!(r.no_slot));
            obj.insert("retry".into(), json!(r.retry));
        }
        Outcome::Accept(a) => {
            obj.insert("result".into(), json!(a.name()));
        }
        Outcome::Gmem(id) => {
            obj.insert("file".into(), json!(id.0));
        }
        Outcome::Query(m) => {
            obj.insert("result".into(), json!(max_level_name(m)));
            if let MaxLevel::MemoryFault(f) = m {
                obj.insert(
                    "exit".into(),
                    json!({"gpa": f.gpa.0, "size": f.size, "private": f.private}),
                );
            }
        }
        Outcome::Overridden { layout, recovery } => {
            obj.insert(
                "overridden".into(),
                json!({"layout": layout.name(), "recovery": recovery.name()}),
            );
        }
    }
    Some(Value::Object(obj))
}
