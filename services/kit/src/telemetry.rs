//! Logs and traces: the `tracing` subscriber (called by binaries only), OTLP
//! export for Jaeger, and W3C trace context carried across gRPC metadata and
//! inside events, so one client frame is one trace across every service.
//!
//! What is exported ([`Sampler`]): a span follows its parent's decision
//! (local or remote, so a whole trace is kept or dropped across processes);
//! a root span marked as background work (the field [`BACKGROUND`] `= true`:
//! gateway reports and lease refreshes, analytics pushes, trims, the presence
//! actor's rounds) is kept at `CHATAI_TRACE_BACKGROUND_RATIO` (default 0:
//! periodic work stays out of Jaeger), a root linked to other spans (a
//! group-committed batch) when any of them is kept, and any other root —
//! a client frame, a connection, an internal caller's call — at
//! `CHATAI_TRACE_SAMPLE_RATIO` (default 1).
//!
//! Telling the parts apart in one process (the all-in-one exports every
//! part under one `service.name`, `chatai`): the spans where a part's work
//! starts are named after the part — `gateway.frame`, `gateway.deliver`,
//! `chat.SendMessage` (a gRPC server span: the part, then the method),
//! `notification.push_analytics` — and carry `chatai.part`; spans inside a
//! part are their children. Run as separate processes, `service.name`
//! (`chatai-gateway`, `chatai-chat`, …) says it as well.
//!
//! JSON log lines (`CHATAI_LOG_JSON=true`) carry `trace_id` and `span_id` of
//! the span they were written in (json-subscriber, reading
//! tracing-opentelemetry's data), so a log line leads to its trace.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, SamplingDecision, SamplingResult, SpanKind, TraceId};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, ShouldSample};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

/// The span field that marks a root span as periodic background work, which
/// the sampler keeps only at `CHATAI_TRACE_BACKGROUND_RATIO`:
/// `tracing::info_span!(parent: None, "gateway.report", chatai.background = true)`.
pub const BACKGROUND: &str = "chatai.background";

/// The span field naming the part a span belongs to (`gateway`, `chat`, …).
pub const PART: &str = "chatai.part";

/// The sampler of root spans (children follow their parent, see the module
/// documentation): background roots at one ratio, linked roots as their
/// links, the rest at another ratio.
#[derive(Debug, Clone)]
struct RootSampler {
    requests: Sampler,
    background: Sampler,
}

impl RootSampler {
    /// The sampler of every span: parent-based, with this for roots.
    fn sampler(sample_ratio: f64, background_ratio: f64) -> Sampler {
        Sampler::ParentBased(Box::new(RootSampler {
            requests: Sampler::TraceIdRatioBased(sample_ratio),
            background: Sampler::TraceIdRatioBased(background_ratio),
        }))
    }
}

impl ShouldSample for RootSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let background = attributes.iter().any(|attribute| {
            attribute.key.as_str() == BACKGROUND
                && attribute.value == opentelemetry::Value::Bool(true)
        });
        if background {
            return self.background.should_sample(
                parent_context,
                trace_id,
                name,
                span_kind,
                attributes,
                links,
            );
        }
        if !links.is_empty() {
            let any_kept = links.iter().any(|link| link.span_context.is_sampled());
            return SamplingResult {
                decision: if any_kept {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                },
                attributes: Vec::new(),
                trace_state: parent_context
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        self.requests
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("bad log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the trace exporter alive; dropping it flushes what is buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("trace exporter did not shut down cleanly: {err}");
        }
    }
}

/// Installs the global subscriber: logs to stderr (text or JSON), spans to
/// OTLP when an endpoint is configured. For binaries; libraries only emit.
pub fn init(
    service_name: &'static str,
    config: &TelemetryConfig,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&config.log_filter)?;
    let fmt = if config.log_json {
        json_logs().boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let (otel, provider) = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(RootSampler::sampler(
                    config.trace_sample_ratio,
                    config.trace_background_ratio,
                ))
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service_name)
                        .build(),
                )
                .build();
            let tracer = provider.tracer(service_name);
            opentelemetry::global::set_tracer_provider(provider.clone());
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

/// The JSON log layer: `tracing_subscriber`'s JSON shape (json-subscriber
/// is a drop-in for it) plus top-level `trace_id` and `span_id` of the span
/// the line was written in, when there is one.
fn json_logs<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'lookup> tracing_subscriber::registry::LookupSpan<'lookup>,
{
    let mut layer = json_subscriber::fmt::layer().with_writer(std::io::stderr);
    let inner = layer.inner_layer_mut();
    inner.add_from_extension::<tracing_opentelemetry::OtelData, _, _>("trace_id", |data| {
        data.trace_id().map(|id| id.to_string())
    });
    inner.add_from_extension::<tracing_opentelemetry::OtelData, _, _>("span_id", |data| {
        data.span_id().map(|id| id.to_string())
    });
    layer
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Writes the current span's trace context into outgoing request metadata.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

/// Makes `span` a child of the trace context found in incoming metadata.
pub fn adopt_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let parent = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    let _ = span.set_parent(parent);
}

/// The current span's trace context, to carry inside an event.
pub fn current_context_map() -> HashMap<String, String> {
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut map);
    map
}

/// Makes `span` a child of the trace context carried by an event.
pub fn adopt_parent_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    if map.is_empty() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(map);
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};

    use super::*;

    fn decide(sampler: &Sampler, attributes: &[KeyValue], links: &[Link]) -> SamplingDecision {
        sampler
            .should_sample(
                None,
                TraceId::from_bytes([7; 16]),
                "root",
                &SpanKind::Internal,
                attributes,
                links,
            )
            .decision
    }

    fn link(sampled: bool) -> Link {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([2; 8]),
            flags,
            false,
            TraceState::default(),
        );
        Link::with_context(context)
    }

    /// Roots marked as background go at the background ratio, linked roots
    /// with their links, the rest at the request ratio.
    #[test]
    fn roots_are_sampled_by_kind() {
        let sampler = RootSampler::sampler(1.0, 0.0);
        let background = [KeyValue::new(BACKGROUND, true)];
        assert_eq!(
            decide(&sampler, &[], &[]),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(decide(&sampler, &background, &[]), SamplingDecision::Drop);
        assert_eq!(
            decide(&sampler, &[], &[link(false), link(true)]),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(&sampler, &[], &[link(false)]),
            SamplingDecision::Drop
        );
        let everything = RootSampler::sampler(1.0, 1.0);
        assert_eq!(
            decide(&everything, &background, &[]),
            SamplingDecision::RecordAndSample
        );
        let nothing = RootSampler::sampler(0.0, 1.0);
        assert_eq!(decide(&nothing, &[], &[]), SamplingDecision::Drop);
    }
}
