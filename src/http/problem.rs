//! Errors the gateway itself answers with, as `application/problem+json`
//! (RFC 9457). Bodies never name a backend address: callers pass a detail
//! written for the client, not an upstream error's text.

use http::{HeaderValue, Response, StatusCode, header};

use super::body::{Body, full};

/// Media type of every error the gateway produces.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Marks an answer the gateway or a policy made itself (a problem, a
/// refusal) rather than one the upstream sent: response policies that
/// rewrite the upstream's documents leave such answers as they are.
#[derive(Clone, Copy, Debug)]
pub struct GatewayAnswer;

/// Builds a problem+json response with `status`, a client-facing `detail`
/// and the request id so that a client report can be matched to a log line.
pub fn problem(status: StatusCode, detail: &str, request_id: &str) -> Response<Body> {
    problem_with(status, detail, request_id, serde_json::Map::new())
}

/// A problem+json response as [`problem`] makes it, with `extra` members
/// (RFC 9457 extensions, such as a list of violations) after the standard ones.
pub fn problem_with(
    status: StatusCode,
    detail: &str,
    request_id: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Response<Body> {
    let title = status.canonical_reason().unwrap_or("Error");
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
        "request_id": request_id,
    });
    if let Some(members) = body.as_object_mut() {
        for (k, v) in extra {
            // The standard members keep their meaning.
            members.entry(k).or_insert(v);
        }
    }
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    resp.extensions_mut().insert(GatewayAnswer);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problem_has_rfc9457_fields_and_media_type() {
        let resp = problem(StatusCode::BAD_GATEWAY, "upstream failed", "abc");
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert!(resp.extensions().get::<GatewayAnswer>().is_some());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["status"], 502);
        assert_eq!(v["title"], "Bad Gateway");
        assert_eq!(v["detail"], "upstream failed");
        assert_eq!(v["request_id"], "abc");
    }

    #[tokio::test]
    async fn extra_members_follow_the_standard_ones_without_replacing_them() {
        let mut extra = serde_json::Map::new();
        extra.insert("errors".into(), serde_json::json!([{"pointer": "/body"}]));
        extra.insert("status".into(), serde_json::json!(200));
        let resp = problem_with(StatusCode::BAD_REQUEST, "invalid", "abc", extra);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["status"], 400);
        assert_eq!(v["errors"][0]["pointer"], "/body");
        assert_eq!(v["request_id"], "abc");
    }
}
