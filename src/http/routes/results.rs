//! `/v1/experiments/{key}/results` and `…/exposures`: what the exposure
//! ledger shows an analyst (§8). Both stay readable after a deletion.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::routes;

use crate::http::auth::{Access, Routes};
use crate::http::error::ApiError;
use crate::http::extract::{PathParams, QueryParams};
use crate::http::openapi::ErrorBody;
use crate::http::views::ResultsView;
use crate::http::AppState;
use crate::store::LedgerRow;

pub fn router() -> Routes<AppState> {
    Routes::new()
        .routes(Access::Client, routes!(get_results))
        .routes(Access::Client, routes!(export_exposures))
}

/// Per phase, newest first: units per treatment against the layout's exact
/// shares, the sample-ratio check, sticky and moved units, answers without
/// a treatment and dropped records.
#[utoipa::path(get, path = "/v1/experiments/{key}/results", tag = "experiments", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key")),
    responses((status = 200, body = ResultsView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn get_results(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
) -> Result<Response, ApiError> {
    let results = state.engine.results(&key).await?;
    Ok(Json(ResultsView::from(results)).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Phase {
    /// The phase to export (default: the newest).
    phase: Option<i64>,
}

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

const NDJSON: &str = "application/x-ndjson";
const CSV: &str = "text/csv; charset=utf-8";
const CSV_HEADER: &str = "org_id,unit_id,treatment,bucket,reason,first_seen\n";

fn format(headers: &HeaderMap) -> Format {
    let wants_ndjson = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case(NDJSON))
        });
    if wants_ndjson {
        Format::Ndjson
    } else {
        Format::Csv
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line
/// break, and otherwise exactly the stored value (the export is for data
/// tools; ids are never rewritten).
fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

fn first_seen(row: &LedgerRow) -> String {
    row.first_seen
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn line(format: Format, row: &LedgerRow) -> String {
    match format {
        Format::Csv => {
            let mut out = String::with_capacity(96);
            csv_field(&mut out, &row.org_id);
            out.push(',');
            csv_field(&mut out, &row.unit_id);
            out.push(',');
            csv_field(&mut out, &row.treatment);
            out.push(',');
            if let Some(bucket) = row.bucket {
                out.push_str(&bucket.to_string());
            }
            out.push(',');
            csv_field(&mut out, &row.reason);
            out.push(',');
            out.push_str(&first_seen(row));
            out.push('\n');
            out
        }
        Format::Ndjson => {
            let mut out = serde_json::json!({
                "org_id": row.org_id,
                "unit_id": row.unit_id,
                "treatment": row.treatment,
                "bucket": row.bucket,
                "reason": row.reason,
                "first_seen": first_seen(row),
            })
            .to_string();
            out.push('\n');
            out
        }
    }
}

/// One phase's ledger, streamed in constant memory: CSV by default,
/// NDJSON with `Accept: application/x-ndjson`. Rows are ordered by org and
/// unit. A store failure mid-stream ends the body early (the answer is
/// already under way), so a short export is an incomplete one.
#[utoipa::path(get, path = "/v1/experiments/{key}/exposures", tag = "experiments", security(("bearer" = [])),
    params(("key" = String, Path, description = "Experiment key"), Phase),
    responses((status = 200, content((String = "text/csv"), (String = "application/x-ndjson"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn export_exposures(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    QueryParams(query): QueryParams<Phase>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let phase = state.engine.export_phase(&key, query.phase).await?;
    let format = format(&headers);
    let head = match format {
        Format::Csv => Some(Ok::<Bytes, std::io::Error>(Bytes::from_static(
            CSV_HEADER.as_bytes(),
        ))),
        Format::Ndjson => None,
    };
    let rows = state.engine.ledger_rows(&key, phase).map(move |row| match row {
        Ok(row) => Ok(Bytes::from(line(format, &row))),
        Err(e) => {
            tracing::error!(error = %e, "an exposure export failed mid-stream; the body ends early");
            Err(std::io::Error::other(e.to_string()))
        }
    });
    let body = Body::from_stream(futures_util::stream::iter(head).chain(rows));
    let content_type = match format {
        Format::Csv => CSV,
        Format::Ndjson => NDJSON,
    };
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_they_must_be() {
        let mut out = String::new();
        for v in ["plain", "a,b", "say \"hi\"", "line\nbreak", "=1+1"] {
            csv_field(&mut out, v);
            out.push('|');
        }
        assert_eq!(
            out,
            "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"line\nbreak\"|=1+1|"
        );
    }

    #[test]
    fn ndjson_is_chosen_only_when_asked_for() {
        let mut headers = HeaderMap::new();
        assert_eq!(format(&headers), Format::Csv);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/csv, application/x-ndjson;q=0.5"),
        );
        assert_eq!(format(&headers), Format::Ndjson);
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(format(&headers), Format::Csv);
    }
}
