//! The remote-command protocol (exec and attach): gather the client's streams (SPDY) or channels
//! (WebSocket), run the backend on them, then report the outcome on the error stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::io::{forward_resizes, ChannelReader, STREAM_QUEUE};
use super::spdy::{self, SpdyStream, StreamWriter};
use super::ws;
use super::{AttachRequest, Backend, BackendError, ExecRequest, StreamIo, TermSize};

/// Remote-command versions over SPDY, best first (v5 is v4 on SPDY: its close signal is
/// WebSocket-only).
pub(crate) const SPDY_PROTOCOLS: &[&str] =
    &["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
/// Remote-command subprotocols over WebSocket ("" — none asked — is accepted as `channel.k8s.io`).
pub(crate) const WS_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];

const CHANNEL_STDIN: u8 = 0;
const CHANNEL_STDOUT: u8 = 1;
const CHANNEL_STDERR: u8 = 2;
const CHANNEL_ERROR: u8 = 3;
const CHANNEL_RESIZE: u8 = 4;

/// An exec or an attach whose URL was used.
pub(crate) enum Target {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

/// The streams the request asked for (stderr folds into the terminal with tty).
#[derive(Debug, Clone, Copy)]
struct Options {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl Target {
    fn options(&self) -> Options {
        let (stdin, stdout, stderr, tty) = match self {
            Target::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Target::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        };
        Options { stdin, stdout, stderr: stderr && !tty, tty }
    }
}

enum Outcome {
    Exited(i32),
    Attached,
    Failed { attach: bool, error: BackendError },
}

/// v4 and later report a JSON `metav1.Status` always; earlier versions a text message on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusFormat {
    Json,
    Text,
}

impl StatusFormat {
    fn of(protocol: &str) -> Self {
        if protocol.starts_with("v4.") || protocol.starts_with("v5.") {
            StatusFormat::Json
        } else {
            StatusFormat::Text
        }
    }
}

/// The bytes written to the error stream for `outcome`, if any.
fn status_message(outcome: &Outcome, format: StatusFormat) -> Option<Vec<u8>> {
    let status = match outcome {
        Outcome::Exited(0) | Outcome::Attached => {
            serde_json::json!({"metadata": {}, "status": "Success"})
        }
        Outcome::Exited(code) => {
            // The client parses the code as a uint8.
            let code = if (1..=255).contains(code) { *code } else { 255 };
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            })
        }
        Outcome::Failed { attach, error } => {
            let what = if *attach { "attaching to container" } else { "executing command in container" };
            let cause = format!("error {what}: {}", error.chain());
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {cause}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": cause}]},
                "code": 500,
            })
        }
    };
    match format {
        StatusFormat::Json => Some(status.to_string().into_bytes()),
        StatusFormat::Text if status["status"] == "Success" => None,
        StatusFormat::Text => status["message"].as_str().map(|m| m.as_bytes().to_vec()),
    }
}

/// Runs the backend; `None` if the client went away first (the backend's future is dropped).
async fn run_backend(
    backend: Arc<dyn Backend>,
    target: Target,
    io: StreamIo,
    gone: CancellationToken,
) -> Option<Outcome> {
    let work = async move {
        match target {
            Target::Exec(req) => match backend.exec(req, io).await {
                Ok(code) => Outcome::Exited(code),
                Err(error) => Outcome::Failed { attach: false, error },
            },
            Target::Attach(req) => match backend.attach(req, io).await {
                Ok(()) => Outcome::Attached,
                Err(error) => Outcome::Failed { attach: true, error },
            },
        }
    };
    tokio::select! {
        outcome = work => Some(outcome),
        () = gone.cancelled() => None,
    }
}

fn resize_channel<R: AsyncRead + Unpin + Send + 'static>(stream: R) -> mpsc::Receiver<TermSize> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(forward_resizes(stream, tx));
    rx
}

/// The client's streams by type, as they arrive.
#[derive(Default)]
struct SpdyStreams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl SpdyStreams {
    fn put(&mut self, stream: SpdyStream) {
        let slot = match stream.headers.get("streamtype") {
            Some("error") => &mut self.error,
            Some("stdin") => &mut self.stdin,
            Some("stdout") => &mut self.stdout,
            Some("stderr") => &mut self.stderr,
            Some("resize") => &mut self.resize,
            other => {
                tracing::debug!(stream = stream.id, stream_type = ?other, "ignoring unexpected stream");
                return;
            }
        };
        *slot = Some(stream);
    }

    fn count(&self) -> usize {
        [&self.error, &self.stdin, &self.stdout, &self.stderr, &self.resize].iter().filter(|s| s.is_some()).count()
    }
}

/// Serves one exec/attach over an upgraded SPDY connection speaking `protocol`.
pub(crate) async fn serve_spdy<IO>(
    backend: Arc<dyn Backend>,
    target: Target,
    protocol: &'static str,
    io: IO,
    leftover: Bytes,
    creation_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (session, mut incoming) = spdy::start(io, leftover, Box::new(|_| Ok(())));
    let opts = target.options();
    let resize = opts.tty && !matches!(protocol, "v2.channel.k8s.io" | "channel.k8s.io");
    let wanted =
        1 + usize::from(opts.stdin) + usize::from(opts.stdout) + usize::from(opts.stderr) + usize::from(resize);
    let mut streams = SpdyStreams::default();
    let deadline = tokio::time::sleep(creation_timeout);
    tokio::pin!(deadline);
    while streams.count() < wanted || streams.error.is_none() {
        tokio::select! {
            stream = incoming.recv() => match stream {
                Some(stream) => streams.put(stream),
                None => return,
            },
            () = &mut deadline => {
                tracing::warn!(wanted, got = streams.count(), "timed out waiting for the client's streams");
                session.close().await;
                return;
            }
        }
    }
    drop(incoming);
    let SpdyStreams { error, stdin, stdout, stderr, resize } = streams;
    let Some(SpdyStream { writer: mut error, .. }) = error else {
        return;
    };
    // The server's half of every stream gets a FIN when the command is done.
    let mut ends: Vec<StreamWriter> = Vec::new();
    let writer = |s: SpdyStream, ends: &mut Vec<StreamWriter>| {
        ends.push(s.writer.handle());
        Box::new(s.writer) as Box<dyn AsyncWrite + Send + Unpin>
    };
    let io = StreamIo {
        stdout: stdout.map(|s| writer(s, &mut ends)),
        stderr: stderr.map(|s| writer(s, &mut ends)),
        stdin: stdin.map(|s| {
            ends.push(s.writer);
            Box::new(s.reader) as Box<dyn AsyncRead + Send + Unpin>
        }),
        resize: resize.map(|s| {
            ends.push(s.writer);
            resize_channel(s.reader)
        }),
        tty: opts.tty,
    };
    let Some(outcome) = run_backend(backend, target, io, session.closed_token()).await else {
        tracing::debug!("client went away during the command");
        return;
    };
    for end in &mut ends {
        end.finish().await;
    }
    if let Some(message) = status_message(&outcome, StatusFormat::of(protocol)) {
        let _ = error.write_all(&message).await;
    }
    error.finish().await;
    session.close().await;
}

/// Serves one exec/attach over an upgraded WebSocket connection speaking `protocol`.
pub(crate) async fn serve_ws<IO>(
    backend: Arc<dyn Backend>,
    target: Target,
    protocol: &'static str,
    io: IO,
    leftover: Bytes,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (conn, messages) = ws::start(io, leftover);
    let opts = target.options();
    let base64 = protocol.contains("base64");
    let (stdin_tx, stdin_rx) = opts.stdin.then(|| mpsc::channel(STREAM_QUEUE)).unzip();
    let (resize_tx, resize_rx) = opts.tty.then(|| mpsc::channel(STREAM_QUEUE)).unzip();
    let mut channels = vec![None; usize::from(CHANNEL_RESIZE) + 1];
    channels[usize::from(CHANNEL_STDIN)] = stdin_tx;
    channels[usize::from(CHANNEL_RESIZE)] = resize_tx;
    tokio::spawn(ws::demux(messages, channels, base64, protocol == "v5.channel.k8s.io"));

    // An empty message on the lowest writable channel tells the client the session is up.
    let first = if opts.stdout {
        CHANNEL_STDOUT
    } else if opts.stderr {
        CHANNEL_STDERR
    } else {
        CHANNEL_ERROR
    };
    conn.send(base64, Bytes::from(vec![if base64 { b'0' + first } else { first }])).await;

    let mut error = conn.channel_writer(CHANNEL_ERROR, base64);
    let io = StreamIo {
        stdin: stdin_rx.map(|rx| Box::new(ChannelReader::new(rx)) as Box<dyn AsyncRead + Send + Unpin>),
        stdout: opts
            .stdout
            .then(|| Box::new(conn.channel_writer(CHANNEL_STDOUT, base64)) as Box<dyn AsyncWrite + Send + Unpin>),
        stderr: opts
            .stderr
            .then(|| Box::new(conn.channel_writer(CHANNEL_STDERR, base64)) as Box<dyn AsyncWrite + Send + Unpin>),
        resize: resize_rx.map(|rx| resize_channel(ChannelReader::new(rx))),
        tty: opts.tty,
    };
    let Some(outcome) = run_backend(backend, target, io, conn.closed_token()).await else {
        tracing::debug!("client went away during the command");
        return;
    };
    if let Some(message) = status_message(&outcome, StatusFormat::of(protocol)) {
        let _ = error.write_all(&message).await;
    }
    conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(outcome: &Outcome) -> serde_json::Value {
        let bytes = status_message(outcome, StatusFormat::Json).expect("v4 always reports");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[test]
    fn v4_status_carries_the_exit_code_the_way_client_go_reads_it() {
        assert_eq!(json(&Outcome::Exited(0))["status"], "Success");
        let failed = json(&Outcome::Exited(3));
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(json(&Outcome::Exited(-9))["details"]["causes"][0]["message"], "255");
    }

    #[test]
    fn backend_failures_are_internal_errors() {
        let error = BackendError::NotFound { what: "container c1".into() };
        let status = json(&Outcome::Failed { attach: false, error });
        assert_eq!(status["reason"], "InternalError");
        assert_eq!(
            status["message"],
            "Internal error occurred: error executing command in container: container c1 not found"
        );
    }

    #[test]
    fn old_protocols_report_text_and_only_failures() {
        assert_eq!(status_message(&Outcome::Exited(0), StatusFormat::Text), None);
        assert_eq!(status_message(&Outcome::Attached, StatusFormat::Text), None);
        let text = status_message(&Outcome::Exited(2), StatusFormat::Text).expect("failure text");
        assert_eq!(text, b"command terminated with non-zero exit code: exit status 2");
        assert_eq!(StatusFormat::of("v3.channel.k8s.io"), StatusFormat::Text);
        assert_eq!(StatusFormat::of("v4.base64.channel.k8s.io"), StatusFormat::Json);
    }

    #[test]
    fn tty_folds_stderr() {
        let target = Target::Exec(ExecRequest { tty: true, stderr: true, stdout: true, ..Default::default() });
        let opts = target.options();
        assert!(opts.stdout && opts.tty && !opts.stderr);
    }
}
