//! What the examples that replay a workload's conversions into a design share: the workload's
//! memslots set up behind KVM's rules, and its conversions checked by those rules as
//! `cvmem compare` checks them (untimed), ready to be applied to a bare design.

use cvmem_designs::{make_design, Action, Vm};
use cvmem_oplog::Op;

/// `design` behind the rules, with the memslots of `ops` (those before its first conversion).
pub(crate) fn with_slots(design: &str, ops: &[Op]) -> Vm {
    let first = ops
        .iter()
        .position(|op| op.attribute_change().is_some())
        .unwrap_or(ops.len());
    let mut vm = Vm::new(make_design(design).expect("a known design"));
    vm.run(&ops[..first])
        .expect("the workload's memslots are valid");
    vm
}

/// The conversions of `ops` that the rules accept, as the actions a design takes.
pub(crate) fn checked_conversions(ops: &[Op]) -> Vec<Action> {
    let rules = with_slots("cvmem", ops);
    ops.iter()
        .filter_map(|op| op.attribute_change()?.ok())
        .filter_map(|(gpa, size, attributes)| rules.rules().attributes(gpa, size, attributes).ok())
        .collect()
}
