//! Seccomp: OCI profile → classic BPF program, installed with seccomp(2).
