//! Generated gRPC code (CRI runtime.v1 and Berth services). Generated code arrives with issue 3.
