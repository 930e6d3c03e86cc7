//! `berth registry`: a read-only OCI distribution registry (the pull half of the API: `/v2/`,
//! manifests by tag or digest, blobs) over plain http, serving the OCI image layouts under a
//! directory — `DIR/library/busybox` is `docker.io/library/busybox` through the node's
//! registries.conf mirror. Images are added by writing layouts there (`skopeo copy … oci:DIR/NAME:TAG`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::image::{MANIFEST_TYPE, REF_NAME};

/// What a request resolved to.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Base,
    Manifest { name: String, reference: String },
    Blob { name: String, digest: String },
    NotFound,
}

/// Parses a request path (pure).
pub fn route(path: &str) -> Route {
    let path = path.split('?').next().unwrap_or("");
    if path == "/v2/" || path == "/v2" {
        return Route::Base;
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return Route::NotFound };
    for (marker, is_manifest) in [("/manifests/", true), ("/blobs/", false)] {
        if let Some(i) = rest.rfind(marker) {
            let (name, reference) = (&rest[..i], &rest[i + marker.len()..]);
            if !valid_name(name) || reference.is_empty() || reference.contains('/') {
                return Route::NotFound;
            }
            return match is_manifest {
                true => Route::Manifest { name: name.into(), reference: reference.into() },
                false if valid_digest(reference) => Route::Blob { name: name.into(), digest: reference.into() },
                false => Route::NotFound,
            };
        }
    }
    Route::NotFound
}

/// Repository names as the distribution spec allows them (no `..`, no empty components).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        })
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
}

/// A manifest found in a layout: its bytes, media type and digest.
struct Found {
    bytes: Vec<u8>,
    media_type: String,
    digest: String,
}

fn find_manifest(root: &Path, name: &str, reference: &str) -> Option<Found> {
    let layout = root.join(name);
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    let entries = index["manifests"].as_array()?;
    let entry = if valid_digest(reference) {
        entries.iter().find(|m| m["digest"] == reference)
    } else {
        entries.iter().find(|m| m["annotations"][REF_NAME] == reference)
    };
    let digest = match entry {
        Some(e) => e["digest"].as_str()?.to_string(),
        None if valid_digest(reference) => reference.to_string(),
        None => return None,
    };
    let bytes = std::fs::read(blob_path(&layout, &digest)).ok()?;
    let doc: Value = serde_json::from_slice(&bytes).ok()?;
    let media_type =
        doc["mediaType"].as_str().or(entry.and_then(|e| e["mediaType"].as_str())).unwrap_or(MANIFEST_TYPE).to_string();
    Some(Found { bytes, media_type, digest })
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// Serves `root` on `listener` until the process ends, one thread per connection.
pub fn serve(root: PathBuf, listener: TcpListener) -> ! {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let root = root.clone();
                std::thread::spawn(move || {
                    let _ = handle(&root, stream);
                });
            }
            Err(e) => eprintln!("berth registry: accept: {e}"),
        }
    }
}

/// One request per connection (`Connection: close`), which every client handles.
fn handle(root: &Path, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let head = method == "HEAD";
    let mut out = stream;
    if method != "GET" && !head {
        return respond(
            &mut out,
            "405 Method Not Allowed",
            "application/json",
            &[],
            br#"{"errors":[{"code":"UNSUPPORTED","message":"read-only registry"}]}"#,
            head,
        );
    }
    match route(path) {
        Route::Base => respond(&mut out, "200 OK", "application/json", &[], b"{}", head),
        Route::Manifest { name, reference } => match find_manifest(root, &name, &reference) {
            Some(m) => {
                respond(&mut out, "200 OK", &m.media_type, &[("Docker-Content-Digest", &m.digest)], &m.bytes, head)
            }
            None => not_found(&mut out, "MANIFEST_UNKNOWN", head),
        },
        Route::Blob { name, digest } => match std::fs::File::open(blob_path(&root.join(&name), &digest)) {
            Ok(f) => send_file(&mut out, f, &digest, head),
            Err(_) => not_found(&mut out, "BLOB_UNKNOWN", head),
        },
        Route::NotFound => not_found(&mut out, "NAME_UNKNOWN", head),
    }
}

fn not_found(out: &mut TcpStream, code: &str, head: bool) -> std::io::Result<()> {
    let body = format!(r#"{{"errors":[{{"code":"{code}","message":"not in this registry"}}]}}"#);
    respond(out, "404 Not Found", "application/json", &[], body.as_bytes(), head)
}

fn header_block(status: &str, content_type: &str, len: u64, extra: &[(&str, &str)]) -> String {
    let mut h = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nDocker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n");
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    out.write_all(header_block(status, content_type, body.len() as u64, extra).as_bytes())?;
    if !head {
        out.write_all(body)?;
    }
    out.flush()
}

fn send_file(out: &mut TcpStream, mut f: std::fs::File, digest: &str, head: bool) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    out.write_all(
        header_block("200 OK", "application/octet-stream", len, &[("Docker-Content-Digest", digest)]).as_bytes(),
    )?;
    if !head {
        std::io::copy(&mut f, out)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_follow_the_distribution_api() {
        assert_eq!(route("/v2/"), Route::Base);
        assert_eq!(
            route("/v2/library/busybox/manifests/latest"),
            Route::Manifest { name: "library/busybox".into(), reference: "latest".into() }
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(route(&format!("/v2/busybox/blobs/{d}")), Route::Blob { name: "busybox".into(), digest: d });
        assert_eq!(route("/v2/busybox/blobs/sha256:zz"), Route::NotFound);
        assert_eq!(route("/v2/../etc/manifests/latest"), Route::NotFound);
        assert_eq!(route("/v2/a//b/manifests/latest"), Route::NotFound);
        assert_eq!(route("/v3/x"), Route::NotFound);
    }

    #[test]
    fn serves_a_written_layout_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("busybox");
        std::fs::write(&fake, b"\x7fELF").unwrap();
        let digest = crate::image::write_busybox(&fake, &dir.path().join("library/busybox"), "latest").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let root = dir.path().to_path_buf();
        std::thread::spawn(move || serve(root, listener));
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut s, &mut text).unwrap();
            text
        };
        let m = get("/v2/library/busybox/manifests/latest");
        assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
        assert!(m.contains(&format!("Docker-Content-Digest: {digest}")), "{m}");
        assert!(get(&format!("/v2/library/busybox/manifests/{digest}")).starts_with("HTTP/1.1 200"));
        assert!(get("/v2/library/busybox/manifests/nope").starts_with("HTTP/1.1 404"));
        assert!(get("/v2/library/nginx/manifests/latest").starts_with("HTTP/1.1 404"));
    }
}
