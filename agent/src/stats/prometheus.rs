//! `/metrics/resource` in the Prometheus text format, with kubelet's metric and label names
//! (what metrics-server scrapes): node, pod and container CPU seconds and working sets,
//! container start times, and `resource_scrape_error`. Samples carry their timestamp (ms).

use std::fmt::Write as _;

use super::Snapshot;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}");
}

/// Label values escaped as the text format wants.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The document for one snapshot.
pub fn resource_metrics(s: &Snapshot) -> String {
    let mut out = String::new();
    let ms = s.ts_ns / 1_000_000;
    let containers = || s.pods.iter().flat_map(|p| p.containers.iter().map(move |c| (p, c)));
    let clabels = |p: &super::PodSample, c: &super::ContainerSample| {
        format!("container=\"{}\",namespace=\"{}\",pod=\"{}\"", esc(&c.name), esc(&p.namespace), esc(&p.name))
    };
    header(
        &mut out,
        "container_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
    );
    for (p, c) in containers() {
        let _ = writeln!(
            out,
            "container_cpu_usage_seconds_total{{{}}} {} {}",
            clabels(p, c),
            secs(c.cpu_ns),
            c.ts_ns / 1_000_000
        );
    }
    header(&mut out, "container_memory_working_set_bytes", "gauge", "Current working set of the container in bytes");
    for (p, c) in containers() {
        let _ = writeln!(
            out,
            "container_memory_working_set_bytes{{{}}} {} {}",
            clabels(p, c),
            c.working_set,
            c.ts_ns / 1_000_000
        );
    }
    header(
        &mut out,
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds",
    );
    for (p, c) in containers() {
        let _ = writeln!(
            out,
            "container_start_time_seconds{{{}}} {} {}",
            clabels(p, c),
            c.start_ns as f64 / 1e9,
            c.ts_ns / 1_000_000
        );
    }
    header(
        &mut out,
        "node_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
    );
    if let Some(c) = s.cpu_ns {
        let _ = writeln!(out, "node_cpu_usage_seconds_total {} {ms}", secs(c));
    }
    header(&mut out, "node_memory_working_set_bytes", "gauge", "Current working set of the node in bytes");
    if let Some(m) = s.memory {
        let _ = writeln!(out, "node_memory_working_set_bytes {} {ms}", m.working_set);
    }
    header(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
    );
    for p in &s.pods {
        let _ = writeln!(
            out,
            "pod_cpu_usage_seconds_total{{namespace=\"{}\",pod=\"{}\"}} {} {}",
            esc(&p.namespace),
            esc(&p.name),
            secs(p.cpu_ns),
            p.ts_ns / 1_000_000
        );
    }
    header(&mut out, "pod_memory_working_set_bytes", "gauge", "Current working set of the pod in bytes");
    for p in &s.pods {
        let _ = writeln!(
            out,
            "pod_memory_working_set_bytes{{namespace=\"{}\",pod=\"{}\"}} {} {}",
            esc(&p.namespace),
            esc(&p.name),
            p.working_set,
            p.ts_ns / 1_000_000
        );
    }
    header(
        &mut out,
        "resource_scrape_error",
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
    );
    let _ = writeln!(out, "resource_scrape_error {}", u8::from(s.scrape_error));
    out
}
