//! Running one design on one workload: every operation validated once, applied, timed; every
//! query's answer recorded so that designs can be compared answer by answer.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cvmem::{Access, Error, Gpa, MapGpaRange, MaxLevel, MemoryRegion, SlotChange};
use cvmem_oplog::{Driver, Executor, Op};
use serde::Serialize;

use crate::design::{answer_code, Design};
use crate::meter;
use crate::vm::{apply, Action, Rules};

/// Latency statistics of one kind of operation, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Operations timed.
    pub count: u64,
    /// Median.
    pub p50_ns: f64,
    /// 99th percentile.
    pub p99_ns: f64,
    /// Largest.
    pub max_ns: f64,
    /// Sum.
    pub total_ns: f64,
}

impl Stats {
    /// Statistics of `samples` (sorted in place).
    pub fn of(samples: &mut [f64]) -> Stats {
        if samples.is_empty() {
            return Stats::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Stats {
            count: samples.len() as u64,
            p50_ns: at(0.5),
            p99_ns: at(0.99),
            max_ns: samples[samples.len() - 1],
            total_ns: samples.iter().sum(),
        }
    }

    /// Mean, or 0 without samples.
    pub fn mean_ns(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_ns / self.count as f64
        }
    }
}

/// Conversions of one size class: `2^log2_pages <= pages < 2^(log2_pages + 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SizeBucket {
    /// log2 of the smallest page count in the class.
    pub log2_pages: u32,
    /// Conversions in the class.
    pub count: u64,
    /// Their total time.
    pub total_ns: f64,
}

/// The result of one design on one workload.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// Design name.
    pub design: String,
    /// Operations applied.
    pub ops: u64,
    /// Operations rejected (identically for every design: validation is shared).
    pub errors: u64,
    /// Attribute changes (attrs, map-gpa).
    pub conversion: Stats,
    /// Fault-path queries: per query, from batches of up to [`QUERY_BATCH`] consecutive ones
    /// (timer overhead subtracted).
    pub query: Stats,
    /// Memslot changes.
    pub memslot: Stats,
    /// Conversion time by range size.
    pub by_size: Vec<SizeBucket>,
    /// Tracking bytes at the end ([`Design::heap_bytes`]).
    pub heap_bytes: u64,
    /// The most tracking bytes held at once.
    pub peak_heap_bytes: u64,
    /// Page-table bytes the design forces to exist.
    pub table_bytes: u64,
    /// Bytes this process held for the design ([`Design::host_bytes`]).
    pub host_bytes: u64,
    /// Bytes really allocated and still live at the end, by the counting allocator (when the
    /// binary installed it).
    pub measured_bytes: Option<u64>,
    /// The most bytes really live at once during the run.
    pub measured_peak_bytes: Option<u64>,
    /// Wall time of the whole run.
    pub wall_ns: f64,
    /// Query answers in order (see [`answer_code`]); not serialised.
    #[serde(skip)]
    pub answers: Vec<u8>,
}

/// Why a run stopped early.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stopped {
    /// Operations done.
    pub after_ops: u64,
    /// Operations in the workload.
    pub of_ops: u64,
    /// Seconds spent.
    pub seconds: f64,
}

/// Consecutive queries timed together.
pub const QUERY_BATCH: usize = 8;

/// The cost of reading the clock twice, subtracted from every query sample.
pub fn timer_overhead_ns() -> f64 {
    static OVERHEAD: OnceLock<f64> = OnceLock::new();
    *OVERHEAD.get_or_init(|| {
        let mut s: Vec<f64> = (0..20_001)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(());
                t.elapsed().as_nanos() as f64
            })
            .collect();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    })
}

/// A design behind the rules whose every change and query is timed: the [`Executor`] that
/// `cvmem compare` drives. Only the design's own work is timed (checks with the rules are not);
/// queries are timed in batches of up to [`QUERY_BATCH`] consecutive ones (a single query is
/// near the clock's resolution), each query of a batch getting the batch's mean.
struct Timed {
    rules: Rules,
    design: Box<dyn Design>,
    overhead: f64,
    conversions: Vec<f64>,
    conv_pages: Vec<u64>,
    queries: Vec<f64>,
    answers: Vec<u8>,
    memslot: Vec<f64>,
    batch: Option<(Instant, usize)>,
    peak_heap: usize,
}

impl Timed {
    fn close_batch(&mut self) {
        if let Some((t, n)) = self.batch.take() {
            let each = ((t.elapsed().as_nanos() as f64 - self.overhead) / n as f64).max(0.0);
            self.queries.extend(std::iter::repeat_n(each, n));
        }
    }

    /// Applies a checked action, timed; returns its time in ns.
    fn timed(&mut self, action: &Action) -> Result<f64, Error> {
        self.close_batch();
        let t = Instant::now();
        apply(self.design.as_mut(), action)?;
        let ns = t.elapsed().as_nanos() as f64;
        self.peak_heap = self.peak_heap.max(self.design.heap_bytes());
        Ok(ns)
    }
}

impl Executor for Timed {
    type Error = Error;

    fn errno(error: &Error) -> &'static str {
        error.errno().name()
    }

    fn memslot(&mut self, region: &MemoryRegion) -> Result<SlotChange, Error> {
        let action = self.rules.memslot(region)?;
        let ns = self.timed(&action)?;
        self.memslot.push(ns);
        self.rules.commit(region)
    }

    fn set_attributes(&mut self, gpa: Gpa, size: u64, attributes: u64) -> Result<(), Error> {
        let action = self.rules.attributes(Gpa(gpa.0), size, attributes)?;
        let ns = self.timed(&action)?;
        if let Action::Attributes { range, .. } = action {
            self.conversions.push(ns);
            self.conv_pages.push(range.len());
        }
        Ok(())
    }

    fn map_gpa(&mut self, request: &MapGpaRange) -> Result<(), Error> {
        self.set_attributes(request.gpa, request.size(), request.attributes())
    }

    #[inline]
    fn query(&mut self, gpa: Gpa, access: Access) -> Result<MaxLevel, Error> {
        let (_, n) = self.batch.get_or_insert_with(|| (Instant::now(), 0));
        *n += 1;
        let full = *n == QUERY_BATCH;
        let answer = self.design.max_mapping_level(gpa.0, access);
        self.answers.push(answer_code(&answer));
        if full {
            self.close_batch();
        }
        Ok(answer)
    }
}

/// Runs a fresh design made by `make` on `ops` through the op-log [`Driver`], giving up once
/// `budget` has passed.
pub fn run_design(
    make: &dyn Fn() -> Box<dyn Design>,
    ops: &[Op],
    budget: Duration,
) -> Result<Run, Stopped> {
    let n_query = ops.iter().filter(|o| matches!(o, Op::Query { .. })).count();
    let mut driver = Driver::new();
    let overhead = timer_overhead_ns();
    let conversions = Vec::with_capacity(ops.len() - n_query);
    let conv_pages = Vec::with_capacity(ops.len() - n_query);
    let queries = Vec::with_capacity(n_query);
    let answers = Vec::with_capacity(n_query);
    // Everything the run itself needs is allocated (the rules' memslots excepted: a few dozen
    // bytes per slot): from here on, live bytes are the design's.
    let metered = meter::installed();
    let before = meter::live_bytes();
    meter::reset_peak();
    let mut timed = Timed {
        rules: Rules::new(),
        design: make(),
        overhead,
        conversions,
        conv_pages,
        queries,
        answers,
        memslot: Vec::new(),
        batch: None,
        peak_heap: 0,
    };
    let start = Instant::now();
    for (i, op) in ops.iter().enumerate() {
        if i % 64 == 0 && start.elapsed() > budget {
            return Err(Stopped {
                after_ops: i as u64,
                of_ops: ops.len() as u64,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
        driver.apply(&mut timed, op);
    }
    timed.close_batch();
    let Timed {
        design,
        mut conversions,
        conv_pages,
        mut queries,
        answers,
        mut memslot,
        peak_heap,
        ..
    } = timed;
    let errors = driver.errors();
    let wall_ns = start.elapsed().as_nanos() as f64;
    let measured = metered.then(|| meter::live_bytes().saturating_sub(before) as u64);
    let measured_peak = metered.then(|| meter::peak_bytes().saturating_sub(before) as u64);
    let mut by_size: Vec<SizeBucket> = Vec::new();
    for (&ns, &pages) in conversions.iter().zip(&conv_pages) {
        let log2 = 63 - pages.max(1).leading_zeros();
        match by_size.iter_mut().find(|b| b.log2_pages == log2) {
            Some(b) => {
                b.count += 1;
                b.total_ns += ns;
            }
            None => by_size.push(SizeBucket {
                log2_pages: log2,
                count: 1,
                total_ns: ns,
            }),
        }
    }
    by_size.sort_by_key(|b| b.log2_pages);
    let run = Run {
        design: design.name().to_string(),
        ops: ops.len() as u64,
        errors,
        conversion: Stats::of(&mut conversions),
        query: Stats::of(&mut queries),
        memslot: Stats::of(&mut memslot),
        by_size,
        heap_bytes: design.heap_bytes() as u64,
        peak_heap_bytes: design.peak_heap_bytes().max(peak_heap) as u64,
        table_bytes: design.table_bytes() as u64,
        host_bytes: design.host_bytes() as u64,
        measured_bytes: measured,
        measured_peak_bytes: measured_peak,
        wall_ns,
        answers,
    };
    drop(design);
    Ok(run)
}

/// The first query where two runs' answers differ: (query number, left, right).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<(usize, u8, u8)> {
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| (i, *x, *y))
        .or_else(|| (a.len() != b.len()).then(|| (a.len().min(b.len()), 255, 255)))
}
