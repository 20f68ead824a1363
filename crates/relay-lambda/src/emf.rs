//! CloudWatch metrics as Embedded Metric Format log lines: a function prints one JSON object
//! per line to stdout, and CloudWatch Logs turns its `_aws` section into metrics, with no API
//! call on the hot path and no extra permission.
//!
//! Written here rather than with the `metrics` facade and `metrics_cloudwatch_embedded`: that
//! needs one process-global recorder, while `relay up --backend aws` and the tests run several
//! handlers in one process; an EMF document is a small JSON object.
//!
//! Namespace `Relay`; every metric has the dimension `Function` (`receiver`, `forwarder`,
//! `dispatcher`); `Rejected` also has `Reason`, the error code the source was answered.

use serde_json::{Map, Value, json};

pub const NAMESPACE: &str = "Relay";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// One EMF document: metrics that share dimensions, and properties (searchable fields such as
/// `event_id`, not metrics).
#[derive(Debug, Clone, PartialEq)]
pub struct Emf {
    dimensions: Vec<(String, String)>,
    metrics: Vec<(String, Unit, Vec<f64>)>,
    properties: Map<String, Value>,
}

impl Emf {
    pub fn new(function: &str) -> Self {
        Emf {
            dimensions: vec![("Function".into(), function.into())],
            metrics: Vec::new(),
            properties: Map::new(),
        }
    }

    pub fn dimension(mut self, name: &str, value: &str) -> Self {
        self.dimensions.push((name.into(), value.into()));
        self
    }

    /// A count (kept even when zero, so a graph shows the zero).
    pub fn count(mut self, name: &str, n: u64) -> Self {
        self.metrics
            .push((name.into(), Unit::Count, vec![n as f64]));
        self
    }

    /// Values of one metric, e.g. each delivery's latency; nothing when there are none.
    pub fn values(mut self, name: &str, unit: Unit, values: Vec<f64>) -> Self {
        // EMF takes at most 100 values per metric and line.
        let values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        for chunk in values.chunks(100).take(1) {
            self.metrics.push((name.into(), unit, chunk.to_vec()));
        }
        self
    }

    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// The metric's values, if it is in the document.
    pub fn get(&self, name: &str) -> Option<&[f64]> {
        self.metrics
            .iter()
            .find(|(n, ..)| n == name)
            .map(|(_, _, v)| v.as_slice())
    }

    pub fn get_property(&self, name: &str) -> Option<&Value> {
        self.properties.get(name)
    }

    /// The document, timestamped `now_ms`.
    pub fn to_json(&self, now_ms: i64) -> Value {
        let mut doc = self.properties.clone();
        for (name, value) in &self.dimensions {
            doc.insert(name.clone(), json!(value));
        }
        for (name, _, values) in &self.metrics {
            let value = match values.as_slice() {
                [one] => json!(one),
                many => json!(many),
            };
            doc.insert(name.clone(), value);
        }
        let names: Vec<&String> = self.dimensions.iter().map(|(n, _)| n).collect();
        let definitions: Vec<Value> = self
            .metrics
            .iter()
            .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
            .collect();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": now_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [names],
                    "Metrics": definitions,
                }],
            }),
        );
        Value::Object(doc)
    }

    /// Prints the document as one line on stdout, where Lambda's log capture finds it.
    pub fn emit(&self) {
        println!("{}", self.to_json(relay_core::now_millis()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_has_the_emf_shape() {
        let emf = Emf::new("receiver")
            .dimension("Reason", "invalid_event")
            .count("Rejected", 1)
            .values("Latency", Unit::Milliseconds, vec![1.5, 2.5])
            .property("event_id", "e-1");
        let doc = emf.to_json(1_700_000_000_000);
        assert_eq!(doc["Function"], "receiver");
        assert_eq!(doc["Reason"], "invalid_event");
        assert_eq!(doc["Rejected"], 1.0);
        assert_eq!(doc["Latency"], json!([1.5, 2.5]));
        assert_eq!(doc["event_id"], "e-1");
        let cw = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000_i64);
        assert_eq!(cw["Namespace"], "Relay");
        assert_eq!(cw["Dimensions"], json!([["Function", "Reason"]]));
        assert_eq!(
            cw["Metrics"],
            json!([{"Name": "Rejected", "Unit": "Count"}, {"Name": "Latency", "Unit": "Milliseconds"}])
        );
        // Every metric named in `_aws` has its value at the top level, as CloudWatch requires.
        for m in cw["Metrics"].as_array().unwrap_or(&Vec::new()) {
            assert!(!doc[m["Name"].as_str().unwrap_or_default()].is_null());
        }
    }

    #[test]
    fn no_values_no_metric() {
        let emf = Emf::new("dispatcher").values("Latency", Unit::Milliseconds, Vec::new());
        assert_eq!(emf.get("Latency"), None);
    }
}
