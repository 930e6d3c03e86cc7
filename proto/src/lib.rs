//! Generated gRPC code: the Kubernetes CRI `runtime.v1` API (RuntimeService and ImageService, tonic
//! servers and clients) compiled by build.rs from the vendored proto/runtime/v1/api.proto.

/// The CRI `runtime` protobuf package.
pub mod runtime {
    /// CRI `runtime.v1`: messages, `runtime_service_{server,client}`, `image_service_{server,client}`.
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}
