//! Exec and attach over SPDY and WebSocket against the host backend.

use std::time::Duration;

use super::client::{self, ClientStream, SpdyClient};
use super::{path_of, server};
use crate::streaming::ws::frame as wsframe;
use crate::streaming::{AttachRequest, ExecRequest, TermSize};

fn exec(cmd: &str, stdin: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

async fn open(spdy: &mut SpdyClient, kind: &str) -> ClientStream {
    spdy.open(&[("streamType", kind)]).await.unwrap_or_else(|| panic!("{kind} stream refused"))
}

fn status(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("status JSON {e}: {}", String::from_utf8_lossy(bytes)))
}

#[tokio::test]
async fn spdy_exec_streams_stdout_stderr_and_the_exit_code() {
    let (server, _) = server().await;
    let url = server.exec_url(exec("echo out; echo err >&2; exit 3", false, false)).expect("url");
    let (protocol, mut spdy) =
        client::spdy_connect(server.local_addr(), &path_of(&server, &url), "v5.channel.k8s.io,v4.channel.k8s.io").await;
    assert_eq!(protocol, "v5.channel.k8s.io");
    let mut error = open(&mut spdy, "error").await;
    let mut stdout = open(&mut spdy, "stdout").await;
    let mut stderr = open(&mut spdy, "stderr").await;
    assert_eq!(stdout.read_all().await, b"out\n");
    assert_eq!(stderr.read_all().await, b"err\n");
    let status = status(&error.read_all().await);
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    spdy.go_away();
}

#[tokio::test]
async fn spdy_exec_feeds_stdin_until_the_client_finishes_it() {
    let (server, _) = server().await;
    let url = server.exec_url(exec("cat; echo done", true, false)).expect("url");
    let (_, mut spdy) = client::spdy_connect(server.local_addr(), &path_of(&server, &url), "v4.channel.k8s.io").await;
    let mut error = open(&mut spdy, "error").await;
    let stdin = open(&mut spdy, "stdin").await;
    let mut stdout = open(&mut spdy, "stdout").await;
    let _stderr = open(&mut spdy, "stderr").await;
    let big = vec![b'x'; 300_000];
    stdin.send(b"hello ");
    stdin.send(&big);
    stdin.finish();
    let mut expected = b"hello ".to_vec();
    expected.extend_from_slice(&big);
    expected.extend_from_slice(b"done\n");
    assert_eq!(stdout.read_all().await, expected);
    assert_eq!(status(&error.read_all().await)["status"], "Success");
}

#[tokio::test]
async fn spdy_exec_with_a_tty_forwards_resizes() {
    let (server, backend) = server().await;
    let url = server.exec_url(exec("read line; echo got $line >&2", true, true)).expect("url");
    let (_, mut spdy) = client::spdy_connect(server.local_addr(), &path_of(&server, &url), "v4.channel.k8s.io").await;
    let mut error = open(&mut spdy, "error").await;
    let stdin = open(&mut spdy, "stdin").await;
    let mut stdout = open(&mut spdy, "stdout").await;
    let resize = open(&mut spdy, "resize").await;
    resize.send(b"{\"Width\":100,\"Height\":40}\n{\"Width\":");
    resize.send(b"120,\"Height\":50}\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stdin.send(b"abc\n");
    assert_eq!(stdout.read_all().await, b"got abc\n");
    assert_eq!(status(&error.read_all().await)["status"], "Success");
    let sizes = backend.resizes.lock().expect("sizes").clone();
    assert_eq!(sizes, [TermSize { width: 100, height: 40 }, TermSize { width: 120, height: 50 }]);
}

#[tokio::test]
async fn spdy_v2_reports_failures_as_text_and_success_as_nothing() {
    let (server, _) = server().await;
    for (cmd, expected) in
        [("exit 2", &b"command terminated with non-zero exit code: exit status 2"[..]), ("true", b"")]
    {
        let url = server.exec_url(exec(cmd, false, false)).expect("url");
        let (protocol, mut spdy) =
            client::spdy_connect(server.local_addr(), &path_of(&server, &url), "v2.channel.k8s.io").await;
        assert_eq!(protocol, "v2.channel.k8s.io");
        let mut error = open(&mut spdy, "error").await;
        let mut stdout = open(&mut spdy, "stdout").await;
        let _stderr = open(&mut spdy, "stderr").await;
        assert_eq!(stdout.read_all().await, b"");
        assert_eq!(error.read_all().await, expected);
    }
}

#[tokio::test]
async fn spdy_attach_and_its_failure() {
    let (server, _) = server().await;
    let attach = |id: &str| AttachRequest { container_id: id.into(), stdin: true, stdout: true, ..Default::default() };
    let url = server.attach_url(attach("c7")).expect("url");
    let (_, mut spdy) = client::spdy_connect(server.local_addr(), &path_of(&server, &url), "v4.channel.k8s.io").await;
    let mut error = open(&mut spdy, "error").await;
    let stdin = open(&mut spdy, "stdin").await;
    let mut stdout = open(&mut spdy, "stdout").await;
    stdin.send(b"typed\n");
    stdin.finish();
    assert_eq!(stdout.read_all().await, b"attached to c7\ntyped\n");
    assert_eq!(status(&error.read_all().await)["status"], "Success");

    let url = server.attach_url(attach("missing")).expect("url");
    let (_, mut spdy) = client::spdy_connect(server.local_addr(), &path_of(&server, &url), "v4.channel.k8s.io").await;
    let mut error = open(&mut spdy, "error").await;
    let _stdin = open(&mut spdy, "stdin").await;
    let _stdout = open(&mut spdy, "stdout").await;
    let status = status(&error.read_all().await);
    assert_eq!(status["reason"], "InternalError");
    assert_eq!(status["message"], "Internal error occurred: error attaching to container: container missing not found");
}

#[tokio::test]
async fn websocket_v5_exec_with_stdin_close_signal() {
    let (server, _) = server().await;
    let url = server.exec_url(exec("cat; echo err >&2; exit 7", true, false)).expect("url");
    let (protocol, mut ws) =
        client::ws_connect(server.local_addr(), &path_of(&server, &url), "v5.channel.k8s.io, v4.channel.k8s.io").await;
    assert_eq!(protocol.as_deref(), Some("v5.channel.k8s.io"));
    ws.send(wsframe::OP_BINARY, b"\x00piped in\n").await;
    ws.send(wsframe::OP_BINARY, &[255, 0]).await;
    let channels = ws.collect_channels(false).await;
    assert_eq!(channels[&1], b"piped in\n");
    assert_eq!(channels[&2], b"err\n");
    let status = status(&channels[&3]);
    assert_eq!(status["details"]["causes"][0]["message"], "7");
}

#[tokio::test]
async fn websocket_base64_exec_with_tty_resize_and_pings() {
    let (server, backend) = server().await;
    let url = server.exec_url(exec("echo on-the-terminal >&2", false, true)).expect("url");
    let (protocol, mut ws) =
        client::ws_connect(server.local_addr(), &path_of(&server, &url), "v4.base64.channel.k8s.io").await;
    assert_eq!(protocol.as_deref(), Some("v4.base64.channel.k8s.io"));
    ws.send(wsframe::OP_PING, b"hb").await;
    // The session announces itself with an empty stdout message first.
    let first = loop {
        let frame = ws.next().await.expect("a message");
        if frame.opcode != wsframe::OP_PONG {
            break frame;
        }
    };
    assert_eq!((first.opcode, &first.payload[..]), (wsframe::OP_TEXT, &b"1"[..]));
    let channels = ws.collect_channels(true).await;
    assert_eq!(channels[&1], b"on-the-terminal\n");
    assert_eq!(status(&channels[&3])["status"], "Success");
    assert!(backend.resizes.lock().expect("sizes").is_empty());
}

#[tokio::test]
async fn websocket_resize_channel_reaches_the_backend() {
    let (server, backend) = server().await;
    let url = server.exec_url(exec("read x; echo $x", true, true)).expect("url");
    let (_, mut ws) = client::ws_connect(server.local_addr(), &path_of(&server, &url), "v4.channel.k8s.io").await;
    ws.send(wsframe::OP_BINARY, b"\x04{\"Width\":33,\"Height\":11}").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    ws.send(wsframe::OP_BINARY, b"\x00line\n").await;
    let channels = ws.collect_channels(false).await;
    assert_eq!(channels[&1], b"line\n");
    assert_eq!(*backend.resizes.lock().expect("sizes"), [TermSize { width: 33, height: 11 }]);
}

#[tokio::test]
async fn a_client_that_goes_away_stops_the_command() {
    let (server, _) = server().await;
    let url = server.exec_url(exec("echo $$; exec sleep 30", false, false)).expect("url");
    let (_, mut spdy) = client::spdy_connect(server.local_addr(), &path_of(&server, &url), "v4.channel.k8s.io").await;
    let error = open(&mut spdy, "error").await;
    let mut stdout = open(&mut spdy, "stdout").await;
    let stderr = open(&mut spdy, "stderr").await;
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        line.extend(stdout.next_chunk().await.expect("the pid"));
    }
    let pid: u32 = String::from_utf8(line).expect("utf8").trim().parse().expect("pid");
    drop((spdy, error, stdout, stderr));
    // The backend's future is dropped and its child killed (a zombie until reaped counts as gone).
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
            .unwrap_or(false)
    };
    for _ in 0..100 {
        if !running() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} still runs after its client left");
}
