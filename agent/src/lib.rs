//! The kubelet-equivalent node agent (issue 6). Not started yet: see the issue notes.
