//! Log output for the CLI: text to stderr or `--log`, or runc-shaped JSON lines
//! (`{"level","msg","time"}`) that containerd parses for error messages.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;

static TO_FILE: AtomicBool = AtomicBool::new(false);

pub fn logs_to_file() -> bool {
    TO_FILE.load(Ordering::Relaxed)
}

pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) {
    let level = if debug { tracing::Level::DEBUG } else { tracing::Level::WARN };
    let file = log.and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    TO_FILE.store(file.is_some(), Ordering::Relaxed);
    let builder = tracing_subscriber::fmt().with_max_level(level);
    let result = match (file, format) {
        (Some(f), LogFormat::Json) => builder.event_format(RuncJson).with_writer(std::sync::Mutex::new(f)).try_init(),
        (Some(f), LogFormat::Text) => builder.with_ansi(false).with_writer(std::sync::Mutex::new(f)).try_init(),
        (None, LogFormat::Json) => builder.event_format(RuncJson).with_writer(std::io::stderr).try_init(),
        (None, LogFormat::Text) => builder.without_time().with_target(false).with_writer(std::io::stderr).try_init(),
    };
    let _ = result;
}

struct RuncJson;

#[derive(Default)]
struct Collect {
    msg: String,
    fields: Vec<(String, String)>,
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.msg, "{value:?}");
        } else {
            self.fields.push((field.name().to_owned(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg.push_str(value);
        } else {
            self.fields.push((field.name().to_owned(), value.to_owned()));
        }
    }
}

impl<S, N> FormatEvent<S, N> for RuncJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut c = Collect::default();
        event.record(&mut c);
        for (k, v) in &c.fields {
            let _ = write!(c.msg, " {k}={v}");
        }
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            _ => "debug",
        };
        let line = serde_json::json!({ "level": level, "msg": c.msg, "time": berth_runtime::state::now_rfc3339() });
        writeln!(writer, "{line}")
    }
}
