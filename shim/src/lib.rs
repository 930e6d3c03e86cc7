//! The CRI runtime server `berth-shim` (issue 3). Not started yet: see the issue notes.
