//! Linux KVM integration (in progress).
