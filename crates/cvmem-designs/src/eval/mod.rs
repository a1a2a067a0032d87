//! The evaluator: run designs on workloads, check they agree, measure them, report.
//!
//! - [`run::run_design`]: one design, one workload, timed op by op;
//! - [`compare::compare`]: designs × guest sizes within a budget, answers cross-checked;
//! - [`sweep::conversion_sweep`]: conversion time against range size;
//! - [`table`], [`chart`]: text tables and SVG charts.

pub mod accept;
pub mod bench;
pub mod chart;
pub mod compare;
pub mod folios;
pub mod run;
pub mod sweep;
pub mod table;
