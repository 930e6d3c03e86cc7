//! The CRI container log format: `<RFC3339Nano> <stream> <P|F> <content>\n`, one record per
//! line of output, lines longer than [`MAX_LINE`] split into partial (`P`) records.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The longest record content; longer lines become several `P` records and a final `F`.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits a byte stream into CRI log records, keeping an unterminated tail until more arrives.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

/// One record: the content (without the newline) and whether the line is complete.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub content: &'a [u8],
    pub full: bool,
}

impl LineSplitter {
    /// Feeds `data`, calling `emit` for each finished record.
    pub fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(Record<'_>)) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) if self.pending.len() + i <= MAX_LINE => {
                    if self.pending.is_empty() {
                        emit(Record { content: &data[..i], full: true });
                    } else {
                        self.pending.extend_from_slice(&data[..i]);
                        emit(Record { content: &self.pending, full: true });
                        self.pending.clear();
                    }
                    data = &data[i + 1..];
                }
                _ => {
                    let room = MAX_LINE - self.pending.len();
                    let take = room.min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() == MAX_LINE && (data.first() != Some(&b'\n')) {
                        emit(Record { content: &self.pending, full: false });
                        self.pending.clear();
                    }
                }
            }
        }
    }

    /// End of stream: an unterminated tail becomes a full record (as containerd writes it).
    pub fn finish(&mut self, mut emit: impl FnMut(Record<'_>)) {
        if !self.pending.is_empty() {
            emit(Record { content: &self.pending, full: true });
            self.pending.clear();
        }
    }
}

/// Formats one record with the given timestamp.
pub fn format_record(out: &mut Vec<u8>, timestamp: &str, stream: Stream, rec: &Record<'_>) {
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if rec.full { b" F " } else { b" P " });
    out.extend_from_slice(rec.content);
    out.push(b'\n');
}

/// A container's log file, reopened on request (log rotation by the kubelet).
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<LogFile> {
        let mut log = LogFile { path: path.to_path_buf(), file: None };
        log.reopen()?;
        Ok(log)
    }

    pub fn reopen(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o640).open(&self.path)?;
        self.file = Some(file);
        Ok(())
    }

    /// Writes `data` as records of `stream`; write errors are logged and the data dropped
    /// (a full disk must not block the container on its pipe).
    pub fn write_records(&mut self, splitter: &mut LineSplitter, stream: Stream, data: &[u8], at_eof: bool) {
        let timestamp = crate::state::now_rfc3339();
        let mut out = Vec::with_capacity(data.len() + 64);
        splitter.feed(data, |rec| format_record(&mut out, &timestamp, stream, &rec));
        if at_eof {
            splitter.finish(|rec| format_record(&mut out, &timestamp, stream, &rec));
        }
        if let (Some(file), false) = (self.file.as_mut(), out.is_empty()) {
            if let Err(e) = file.write_all(&out) {
                tracing::warn!(path = %self.path.display(), error = %e, "writing container log");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], finish: bool) -> Vec<(String, bool)> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |r| out.push((String::from_utf8_lossy(r.content).into_owned(), r.full)));
        }
        if finish {
            s.finish(|r| out.push((String::from_utf8_lossy(r.content).into_owned(), r.full)));
        }
        out
    }

    #[test]
    fn whole_lines_are_full_records() {
        assert_eq!(split(&[b"a\nbb\n"], false), vec![("a".into(), true), ("bb".into(), true)]);
    }

    #[test]
    fn a_line_split_across_reads_is_one_record() {
        assert_eq!(split(&[b"hel", b"lo\nwor", b"ld\n"], false), vec![("hello".into(), true), ("world".into(), true)]);
    }

    #[test]
    fn empty_lines_are_kept() {
        assert_eq!(split(&[b"\n\nx\n"], false), vec![("".into(), true), ("".into(), true), ("x".into(), true)]);
    }

    #[test]
    fn unterminated_tail_is_held_until_eof() {
        assert_eq!(split(&[b"a\nrest"], false), vec![("a".into(), true)]);
        assert_eq!(split(&[b"a\nrest"], true), vec![("a".into(), true), ("rest".into(), true)]);
    }

    #[test]
    fn long_lines_become_partials_then_a_full_record() {
        let line = vec![b'x'; MAX_LINE * 2 + 10];
        let mut data = line.clone();
        data.push(b'\n');
        let recs = split(&[&data[..100], &data[100..]], false);
        assert_eq!(
            recs.iter().map(|r| (r.0.len(), r.1)).collect::<Vec<_>>(),
            vec![(MAX_LINE, false), (MAX_LINE, false), (10, true)]
        );
    }

    #[test]
    fn a_line_of_exactly_max_is_one_full_record() {
        let mut data = vec![b'y'; MAX_LINE];
        data.push(b'\n');
        let recs = split(&[&data], false);
        assert_eq!(recs.iter().map(|r| (r.0.len(), r.1)).collect::<Vec<_>>(), vec![(MAX_LINE, true)]);
    }

    #[test]
    fn record_format_matches_cri() {
        let mut out = Vec::new();
        format_record(
            &mut out,
            "2026-01-02T03:04:05.000000001Z",
            Stream::Stderr,
            &Record { content: b"oops", full: false },
        );
        assert_eq!(out, b"2026-01-02T03:04:05.000000001Z stderr P oops\n");
    }
}
